//! RESP2 framing, sans-IO: a [`Decoder`] that turns received bytes into
//! commands (arrays of bulk strings, and inline commands), and [`Reply`],
//! which encodes answers.
//!
//! ```text
//!  bytes ──► Decoder::feed ──► Decoder::next_command ──► Some(args) | None (needs more)
//!                                        │
//!                                        └──► Err(ProtocolError)  (reply it, then close)
//! ```
//!
//! The decoder owns its buffer and remembers how far it got in a command
//! that is not complete yet, so a large value arriving in many reads is
//! scanned once. Every length header is checked against [`Limits`] before
//! anything is reserved: a header never makes it allocate more than the
//! bytes that actually arrived.
//!
//! ```
//! use clustron_dkv::cache::resp::codec::{encode_command, Decoder, Limits, Reply};
//!
//! let mut decoder = Decoder::new(Limits::default());
//! let mut wire = Vec::new();
//! encode_command(&[b"SET".as_slice(), b"k", b"v"], &mut wire);
//! decoder.feed(&wire[..7]);
//! assert_eq!(decoder.next_command(), Ok(None));
//! decoder.feed(&wire[7..]);
//! decoder.feed(b"PING\r\n");
//! assert_eq!(decoder.next_command(), Ok(Some(vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()])));
//! assert_eq!(decoder.next_command(), Ok(Some(vec![b"PING".to_vec()])));
//! assert_eq!(decoder.next_command(), Ok(None));
//!
//! let mut out = Vec::new();
//! Reply::Bulk(b"v".to_vec()).encode(&mut out);
//! assert_eq!(out, b"$1\r\nv\r\n");
//! ```

use std::fmt;

/// How much one command may hold. A command over a limit is a protocol
/// error: the connection answers it and closes, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (one key or value), in bytes. Set it a little
    /// above the namespace's largest value, so that a value just over the
    /// namespace's limit gets the store's clear refusal rather than a
    /// protocol error.
    pub max_bulk_len: usize,
    /// Most arguments in one command (the command name included).
    pub max_args: usize,
    /// Longest inline command line, in bytes (Redis: 64 KiB).
    pub max_inline_len: usize,
    /// Most bytes of one command's arguments together: bounds the buffer
    /// of a connection whatever the argument count.
    pub max_command_len: usize,
}

/// Room above the largest value for [`Limits::for_max_value`].
pub const BULK_SLACK: usize = 64 * 1024;

/// Longest `*N` or `$N` header line: a sign, 19 digits and CRLF fit.
const MAX_HEADER_LINE: usize = 32;

impl Limits {
    /// Limits for values of up to `max_value` bytes: bulks up to
    /// `max_value` + [`BULK_SLACK`], 1,048,576 arguments (Redis's own
    /// limit), 64 KiB inline lines and 64 MiB per command (or four largest
    /// bulks, if more).
    pub fn for_max_value(max_value: usize) -> Limits {
        let max_bulk_len = max_value.saturating_add(BULK_SLACK);
        Limits {
            max_bulk_len,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
            max_command_len: (64 * 1024 * 1024).max(max_bulk_len.saturating_mul(4)),
        }
    }
}

impl Default for Limits {
    /// [`Limits::for_max_value`] of 1 MiB, memcached's default item size:
    /// a cache value larger than that is rarely a good idea.
    fn default() -> Self {
        Limits::for_max_value(1024 * 1024)
    }
}

/// Why the bytes are not RESP. Its text is Redis's own for the same
/// fault; the connection replies `-ERR Protocol error: ...` and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline command line longer than [`Limits::max_inline_len`].
    InlineTooLong,
    /// An inline command with an unterminated quote.
    UnbalancedQuotes,
    /// A `*N` header that is not a number, or more than
    /// [`Limits::max_args`].
    InvalidMultibulkLength,
    /// A `*N` header line with no end in sight.
    MultibulkCountTooLong,
    /// An array element that is not a bulk string.
    ExpectedBulk(u8),
    /// A `$N` header that is not a number, is negative, or exceeds
    /// [`Limits::max_bulk_len`].
    InvalidBulkLength,
    /// A `$N` header line with no end in sight.
    BulkCountTooLong,
    /// A bulk string not followed by CRLF.
    MissingCrlf,
    /// The arguments together exceed [`Limits::max_command_len`].
    CommandTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            Self::InlineTooLong => f.write_str("too big inline request"),
            Self::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            Self::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            Self::MultibulkCountTooLong => f.write_str("too big mbulk count string"),
            Self::ExpectedBulk(got) => write!(f, "expected '$', got '{}'", printable(*got)),
            Self::InvalidBulkLength => f.write_str("invalid bulk length"),
            Self::BulkCountTooLong => f.write_str("too big bulk count string"),
            Self::MissingCrlf => f.write_str("expected CRLF after a bulk string"),
            Self::CommandTooLong { limit } => {
                write!(f, "command longer than the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A byte as Redis shows it in an error: itself if printable, else `?`.
fn printable(byte: u8) -> char {
    match byte {
        0x20..=0x7e => char::from(byte),
        _ => '?',
    }
}

/// One command's arguments, the name first.
pub type Args = Vec<Vec<u8>>;

/// Incremental RESP2 request decoder; see the module documentation.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as commands.
    start: usize,
    /// The array being read, when its header has been read.
    partial: Option<Partial>,
}

/// Progress in an array whose elements have not all arrived.
#[derive(Debug)]
struct Partial {
    /// Elements still to read.
    remaining: usize,
    /// Elements read so far.
    args: Args,
    /// Their total length.
    len: usize,
}

/// A line at the front of some bytes: its content and the length with its
/// terminator.
struct Line<'a> {
    content: &'a [u8],
    consumed: usize,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            buf: Vec::new(),
            start: 0,
            partial: None,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Drop what was returned before growing, so the buffer holds at
        // most one unfinished command plus what is not parsed yet.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet returned as commands.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete command, `Ok(None)` if more bytes are needed.
    /// After an error the decoder's state is unspecified: reply and close.
    pub fn next_command(&mut self) -> Result<Option<Args>, ProtocolError> {
        loop {
            if self.partial.is_none() {
                let Some(&first) = self.buf.get(self.start) else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline()? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    }
                }
                let Some(count) = self.multibulk_header()? else {
                    return Ok(None);
                };
                // Redis skips `*0` and negative counts as empty requests.
                let Ok(count) = usize::try_from(count) else {
                    continue;
                };
                if count == 0 {
                    continue;
                }
                if count > self.limits.max_args {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                self.partial = Some(Partial {
                    remaining: count,
                    // Never reserve from a header: at most what a small
                    // command needs, the vector grows with real elements.
                    args: Vec::with_capacity(count.min(16)),
                    len: 0,
                });
            }
            return self.bulks();
        }
    }

    /// Reads the elements of the current array that have arrived.
    fn bulks(&mut self) -> Result<Option<Args>, ProtocolError> {
        let limits = self.limits;
        loop {
            let Some(partial) = &self.partial else {
                return Ok(None);
            };
            if partial.remaining == 0 {
                let done = self.partial.take().map(|p| p.args);
                return Ok(done);
            }
            let rest = &self.buf[self.start..];
            let Some(&first) = rest.first() else {
                return Ok(None);
            };
            if first != b'$' {
                return Err(ProtocolError::ExpectedBulk(first));
            }
            let Some(line) = line(rest, MAX_HEADER_LINE) else {
                return match line_overdue(rest, MAX_HEADER_LINE) {
                    true => Err(ProtocolError::BulkCountTooLong),
                    false => Ok(None),
                };
            };
            let len = parse_count(&line.content[1..])
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= limits.max_bulk_len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            if partial.len.saturating_add(len) > limits.max_command_len {
                return Err(ProtocolError::CommandTooLong {
                    limit: limits.max_command_len,
                });
            }
            let body = line.consumed;
            let end = body + len;
            if rest.len() < end + 2 {
                return Ok(None);
            }
            if &rest[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            let arg = rest[body..end].to_vec();
            self.start += end + 2;
            if let Some(partial) = &mut self.partial {
                partial.remaining -= 1;
                partial.len += len;
                partial.args.push(arg);
            }
        }
    }

    /// Reads a `*N` header at the front; `None` if it has not all arrived.
    fn multibulk_header(&mut self) -> Result<Option<i64>, ProtocolError> {
        let rest = &self.buf[self.start..];
        let Some(line) = line(rest, MAX_HEADER_LINE) else {
            return match line_overdue(rest, MAX_HEADER_LINE) {
                true => Err(ProtocolError::MultibulkCountTooLong),
                false => Ok(None),
            };
        };
        let count = parse_count(&line.content[1..]).ok_or(ProtocolError::InvalidMultibulkLength)?;
        self.start += line.consumed;
        Ok(Some(count))
    }

    /// Reads an inline command (a line of words, as `telnet` sends);
    /// `Some(empty)` for a blank line.
    fn inline(&mut self) -> Result<Option<Args>, ProtocolError> {
        let max = self.limits.max_inline_len;
        let rest = &self.buf[self.start..];
        let Some(line) = line(rest, max) else {
            return match line_overdue(rest, max) {
                true => Err(ProtocolError::InlineTooLong),
                false => Ok(None),
            };
        };
        let args = split_inline(line.content)?;
        if args.len() > self.limits.max_args {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        self.start += line.consumed;
        Ok(Some(args))
    }
}

/// The line at the front of `bytes` (ended by `\n`, an optional `\r`
/// before it removed), if it ends within `max` bytes of content.
fn line(bytes: &[u8], max: usize) -> Option<Line<'_>> {
    let window = &bytes[..bytes.len().min(max.saturating_add(2))];
    let newline = window.iter().position(|&b| b == b'\n')?;
    let content = &bytes[..newline];
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.len() > max {
        return None;
    }
    Some(Line {
        content,
        consumed: newline + 1,
    })
}

/// Whether a line of at most `max` bytes should have ended by now: its
/// content and CRLF would fit in what arrived. Only then is a missing line
/// end an error, so the answer does not depend on how the bytes were split.
fn line_overdue(rest: &[u8], max: usize) -> bool {
    rest.len() >= max.saturating_add(2)
}

/// A decimal count as RESP writes it: optional `-`, then digits only.
fn parse_count(digits: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(digits).ok()?;
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Splits an inline command into words as Redis's `sdssplitargs` does:
/// blanks separate words; `"..."` allows the escapes `\n \r \t \b \a \\
/// \" \xHH`; `'...'` allows `\'`; a closing quote must be followed by a
/// blank or the end.
pub fn split_inline(line: &[u8]) -> Result<Args, ProtocolError> {
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while line.get(at).is_some_and(|&b| is_blank(b)) {
            at += 1;
        }
        if at >= line.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        let mut quote = None;
        loop {
            let Some(&b) = line.get(at) else {
                if quote.is_some() {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            match quote {
                Some(b'"') => {
                    if b == b'\\' && line.get(at + 1) == Some(&b'x') {
                        let hex = line.get(at + 2..at + 4).and_then(|h| {
                            let h = std::str::from_utf8(h).ok()?;
                            u8::from_str_radix(h, 16).ok()
                        });
                        if let Some(byte) = hex {
                            word.push(byte);
                            at += 4;
                            continue;
                        }
                    }
                    if b == b'\\' {
                        if let Some(&next) = line.get(at + 1) {
                            word.push(match next {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            at += 2;
                            continue;
                        }
                    }
                    if b == b'"' {
                        closing_quote(line, at)?;
                        at += 1;
                        break;
                    }
                    word.push(b);
                }
                Some(_) => {
                    if b == b'\\' && line.get(at + 1) == Some(&b'\'') {
                        word.push(b'\'');
                        at += 2;
                        continue;
                    }
                    if b == b'\'' {
                        closing_quote(line, at)?;
                        at += 1;
                        break;
                    }
                    word.push(b);
                }
                None if is_blank(b) => break,
                None if b == b'"' || b == b'\'' => quote = Some(b),
                None => word.push(b),
            }
            at += 1;
        }
        args.push(word);
    }
}

/// What separates inline words: C's `isspace`, and NUL (which ends a
/// Redis inline command's string). The same test skips blanks and ends a
/// word, so that every pass of the word loop moves forward.
fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0)
}

/// A closing quote at `at` must be followed by a blank or the end.
fn closing_quote(line: &[u8], at: usize) -> Result<(), ProtocolError> {
    match line.get(at + 1) {
        Some(&next) if !is_blank(next) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(()),
    }
}

/// Encodes a command as clients send it: an array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status line (CR and LF are replaced by spaces).
    Simple(String),
    /// `-ERR ...`: an error line, starting with its code (`ERR`,
    /// `NOPERM`, `TRYAGAIN`, ...); CR and LF are replaced by spaces.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`.
    Bulk(Vec<u8>),
    /// `$-1`: no value (Redis's nil).
    NullBulk,
    /// `*N` followed by the elements.
    Array(Vec<Reply>),
    /// `*-1`.
    NullArray,
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_owned())
    }

    /// An `ERR` error with this message.
    pub fn err(message: impl fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// A bulk string of `bytes`.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => line_reply(out, b'+', text),
            Reply::Error(text) => line_reply(out, b'-', text),
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::NullBulk => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// Whether it is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// A one-line reply: a line break inside would end it early and desync the
/// client, so it becomes a space (as Redis does for error texts).
fn line_reply(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(text.bytes().map(|b| match b {
        b'\r' | b'\n' => b' ',
        other => other,
    }));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn args(words: &[&str]) -> Args {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn decode_all(limits: Limits, chunks: &[&[u8]]) -> Result<Vec<Args>, ProtocolError> {
        let mut decoder = Decoder::new(limits);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk);
            while let Some(command) = decoder.next_command()? {
                out.push(command);
            }
        }
        Ok(out)
    }

    fn pipeline() -> (Vec<u8>, Vec<Args>) {
        let commands = vec![
            args(&["SET", "key", "value with spaces\r\n"]),
            args(&["GET", "key"]),
            vec![b"SET".to_vec(), Vec::new(), vec![0, 255, b'\r', b'\n']],
            args(&["PING"]),
            args(&["MGET", "a", "b", "c"]),
        ];
        let mut wire = Vec::new();
        for command in &commands {
            encode_command(command, &mut wire);
        }
        wire.extend_from_slice(b"set  inline \"quoted \\x41\\n\" 'it\\'s'\r\n");
        let mut expected = commands;
        expected.push(vec![
            b"set".to_vec(),
            b"inline".to_vec(),
            b"quoted A\n".to_vec(),
            b"it's".to_vec(),
        ]);
        wire.extend_from_slice(b"\r\n*0\r\nDBSIZE\n");
        expected.push(args(&["DBSIZE"]));
        (wire, expected)
    }

    #[test]
    fn a_pipeline_decodes_the_same_when_split_at_every_byte_position() {
        let (wire, expected) = pipeline();
        assert_eq!(
            decode_all(Limits::default(), &[&wire]),
            Ok(expected.clone())
        );
        for at in 0..=wire.len() {
            let (a, b) = wire.split_at(at);
            assert_eq!(
                decode_all(Limits::default(), &[a, b]),
                Ok(expected.clone()),
                "split at {at}"
            );
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(Limits::default(), &bytes), Ok(expected));
    }

    #[test]
    fn an_incomplete_command_asks_for_more_and_returns_nothing() {
        for partial in [
            &b"*2\r\n$3\r\nGET\r\n$1\r\n"[..],
            b"*2",
            b"*2\r\n$3\r\nGE",
            b"GET k",
        ] {
            assert_eq!(decode_all(Limits::default(), &[partial]), Ok(vec![]));
        }
    }

    #[test]
    fn length_headers_over_the_limits_are_refused_before_any_allocation() {
        let limits = Limits {
            max_bulk_len: 10,
            max_args: 3,
            max_inline_len: 16,
            max_command_len: 15,
        };
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*4\r\n", ProtocolError::InvalidMultibulkLength),
            (
                b"*99999999999999999999\r\n",
                ProtocolError::InvalidMultibulkLength,
            ),
            (b"*1x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*1\r\n$11\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$+1\r\n", ProtocolError::InvalidBulkLength),
            (
                b"*1\r\n$9223372036854775808\r\n",
                ProtocolError::InvalidBulkLength,
            ),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$1\r\nab\r\n", ProtocolError::MissingCrlf),
            (
                b"*2\r\n$10\r\n0123456789\r\n$6\r\n",
                ProtocolError::CommandTooLong { limit: 15 },
            ),
            (&[b'*'; 40], ProtocolError::MultibulkCountTooLong),
            (
                b"*1\r\n$00000000000000000000000000000000000",
                ProtocolError::BulkCountTooLong,
            ),
            (&[b'a'; 40], ProtocolError::InlineTooLong),
            (b"a b c d\r\n", ProtocolError::InvalidMultibulkLength),
            (b"set \"open\r\n", ProtocolError::UnbalancedQuotes),
            (b"set \"a\"b\r\n", ProtocolError::UnbalancedQuotes),
        ];
        for (input, error) in cases {
            assert_eq!(
                decode_all(limits, &[input]),
                Err(error.clone()),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            decode_all(limits, &[b"*1\r\n$10\r\n0123456789\r\n"]),
            Ok(vec![args(&["0123456789"])])
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_decodes_even_byte_by_byte() {
        let limits = Limits {
            max_inline_len: 8,
            ..Limits::default()
        };
        let bytes: Vec<&[u8]> = b"get 1234\r\n".chunks(1).collect();
        assert_eq!(decode_all(limits, &bytes), Ok(vec![args(&["get", "1234"])]));
        let bytes: Vec<&[u8]> = b"get 12345\r\n".chunks(1).collect();
        assert_eq!(
            decode_all(limits, &bytes),
            Err(ProtocolError::InlineTooLong)
        );
    }

    #[test]
    fn protocol_errors_read_as_redis_writes_them() {
        assert_eq!(
            ProtocolError::ExpectedBulk(b':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            ProtocolError::InvalidBulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            ProtocolError::UnbalancedQuotes.to_string(),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn inline_commands_split_on_blanks_and_honour_quotes_and_escapes() {
        let cases: &[(&[u8], Vec<&[u8]>)] = &[
            (b"  get   key ", vec![b"get", b"key"]),
            (b"set k \"a b\"", vec![b"set", b"k", b"a b"]),
            (
                b"set k \"\\x00\\xff\\t\\\"\"",
                vec![b"set", b"k", b"\x00\xff\t\""],
            ),
            (b"set k 'single \"x\"'", vec![b"set", b"k", b"single \"x\""]),
            (b"set k \"\"", vec![b"set", b"k", b""]),
            (b"a\0b\x0b\x0cc\0", vec![b"a", b"b", b"c"]),
            (b"\0\0", vec![]),
            (b"", vec![]),
        ];
        for (line, words) in cases {
            let words: Args = words.iter().map(|w| w.to_vec()).collect();
            assert_eq!(split_inline(line), Ok(words));
        }
    }

    #[test]
    fn every_reply_encodes_as_redis_writes_it() {
        let reply = Reply::Array(vec![
            Reply::ok(),
            Reply::err("syntax error"),
            Reply::Integer(-2),
            Reply::bulk("hé"),
            Reply::NullBulk,
            Reply::Array(vec![]),
            Reply::NullArray,
            Reply::Error("ERR line\r\nbreak".into()),
        ]);
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(
            out,
            b"*8\r\n+OK\r\n-ERR syntax error\r\n:-2\r\n$3\r\nh\xc3\xa9\r\n$-1\r\n*0\r\n*-1\r\n-ERR line  break\r\n"
        );
    }

    #[test]
    fn a_large_value_arriving_in_small_reads_decodes_once_and_leaves_nothing_buffered() {
        let value = vec![b'x'; 200_000];
        let mut wire = Vec::new();
        encode_command(&[b"SET".as_slice(), b"k", &value], &mut wire);
        let mut decoder = Decoder::new(Limits::default());
        let mut got = None;
        for chunk in wire.chunks(1000) {
            decoder.feed(chunk);
            if let Some(command) = decoder.next_command().expect("valid") {
                got = Some(command);
            }
        }
        assert_eq!(got.map(|c| c[2].len()), Some(200_000));
        assert_eq!(decoder.buffered(), 0);
    }

    fn command() -> impl Strategy<Value = Args> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any pipeline of commands, encoded as clients do and cut into
        /// any pieces, decodes to exactly those commands.
        #[test]
        fn any_pipeline_cut_anywhere_decodes_to_its_commands(
            commands in proptest::collection::vec(command(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut wire = Vec::new();
            for command in &commands {
                encode_command(command, &mut wire);
            }
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            at.sort();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in at {
                chunks.push(&wire[from..cut]);
                from = cut;
            }
            chunks.push(&wire[from..]);
            prop_assert_eq!(decode_all(Limits::default(), &chunks), Ok(commands));
        }
    }
}
