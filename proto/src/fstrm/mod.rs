//! Frame Streams (fstrm) framing and the reader-side handshake: pure code, no sockets.
//!
//! # Wire layout
//!
//! A Frame Streams byte stream is a sequence of frames, each introduced by a big-endian `u32`:
//!
//! ```text
//! data frame:     [ N: BE u32, N > 0 ][ N bytes of payload (one dnstap protobuf) ]
//! control frame:  [ 0: BE u32 escape ][ L: BE u32 control length ][ L bytes of control payload ]
//! control payload: [ type: BE u32 ]( [ field type: BE u32 ][ field length: BE u32 ][ bytes ] )*
//! ```
//!
//! Control types: ACCEPT = 1, START = 2, STOP = 3, READY = 4, FINISH = 5. The only defined field
//! type is `CONTENT_TYPE` = 1; for dnstap its value is [`DNSTAP_CONTENT_TYPE`]. A data frame can
//! never be empty, because a length of 0 is the escape. `L` counts the type word and the fields
//! but not the escape nor the length word, so `L >= 4`; like libfstrm we refuse `L > 512`
//! ([`MAX_CONTROL_FRAME`]) and content types longer than 256 bytes ([`MAX_CONTENT_TYPE`]).
//!
//! # Decoding
//!
//! [`FrameDecoder`] is a [`tokio_util::codec::Decoder`] producing [`Frame`]s. Data payloads are
//! split out of the read buffer without copying. A data frame longer than the configured maximum
//! is never buffered: the decoder reports [`Frame::Oversize`] as soon as the length prefix has
//! arrived and then silently discards exactly that many bytes as they come in, after which the
//! stream continues (this is what `fstrm_capture` and golang-framestream do). Malformed control
//! frames are errors ([`FrameError`]), and so is the end of the stream in the middle of a frame
//! ([`FrameError::Truncated`]). Errors are sticky: a failed `decode` consumes nothing, so calling
//! it again returns the same error.
//!
//! # Reader policy
//!
//! The broker is always the Frame Streams *reader*, even when it dials out. [`ReaderHandshake`]
//! is a pure state machine that is fed every control frame (and told about every data frame)
//! and answers with a [`Step`] — possibly a reply to write to the peer — or a
//! [`HandshakeError`]. It implements the "safe receiver policy":
//!
//! * The mode is chosen from the first control frame: READY means bidirectional (the peer waits
//!   for our ACCEPT), START means unidirectional (files, pipes, one-way sockets: never write).
//! * A READY that lists our content type, or lists none, is answered with an ACCEPT carrying
//!   exactly our content type (Unbound requires that). A READY listing only other types is a
//!   content-type mismatch: close without replying.
//! * A START whose content type is absent or ours starts the stream; anything else is a
//!   mismatch. Data frames before START are an error.
//! * After START only data frames and STOP are expected. Unknown control types are ignored
//!   (forward compatibility) but READY, ACCEPT, FINISH or a second START are errors. Before START
//!   unknown control types are errors.
//! * STOP ends the stream. In bidirectional mode we answer FINISH and nothing more may follow.
//!   In unidirectional mode a new START may follow, so files made by concatenating captures
//!   (`cat a.fstrm b.fstrm`) read in full.

use std::fmt;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// The Frame Streams content type of dnstap payloads.
pub const DNSTAP_CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";
/// Default maximum data frame payload accepted by [`FrameDecoder`] (1 MiB, libfstrm's default).
pub const DEFAULT_MAX_DATA_FRAME: usize = 1024 * 1024;
/// libfstrm's cap on the control payload length (`FSTRM_CONTROL_FRAME_LENGTH_MAX`).
pub const MAX_CONTROL_FRAME: usize = 512;
/// libfstrm's cap on the length of one `CONTENT_TYPE` field value.
pub const MAX_CONTENT_TYPE: usize = 256;
/// Control field type of a content type.
pub const FIELD_CONTENT_TYPE: u32 = 1;

/// Size of the length prefix (and of the escape word).
const LEN_PREFIX: usize = 4;
/// Escape word plus control length word.
const CONTROL_HEADER: usize = 8;
/// Smallest valid control length: the control type word alone.
const MIN_CONTROL_FRAME: usize = 4;

/// Frame Streams control frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    /// 1: reader → writer, answers READY (bidirectional only).
    Accept,
    /// 2: writer → reader, data frames follow.
    Start,
    /// 3: writer → reader, end of the stream.
    Stop,
    /// 4: writer → reader, opens a bidirectional handshake.
    Ready,
    /// 5: reader → writer, answers STOP (bidirectional only).
    Finish,
    /// Any other value. Values 1 to 5 always decode to the named variants.
    Unknown(u32),
}

impl ControlType {
    /// The numeric control type as sent on the wire.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            ControlType::Accept => 1,
            ControlType::Start => 2,
            ControlType::Stop => 3,
            ControlType::Ready => 4,
            ControlType::Finish => 5,
            ControlType::Unknown(code) => code,
        }
    }
}

impl From<u32> for ControlType {
    fn from(code: u32) -> Self {
        match code {
            1 => ControlType::Accept,
            2 => ControlType::Start,
            3 => ControlType::Stop,
            4 => ControlType::Ready,
            5 => ControlType::Finish,
            other => ControlType::Unknown(other),
        }
    }
}

impl From<ControlType> for u32 {
    fn from(kind: ControlType) -> Self {
        kind.code()
    }
}

impl fmt::Display for ControlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlType::Accept => f.write_str("ACCEPT"),
            ControlType::Start => f.write_str("START"),
            ControlType::Stop => f.write_str("STOP"),
            ControlType::Ready => f.write_str("READY"),
            ControlType::Finish => f.write_str("FINISH"),
            ControlType::Unknown(code) => write!(f, "unknown type {code}"),
        }
    }
}

/// A decoded (or to-be-encoded) control frame. Unknown field types are dropped when decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFrame {
    /// The control type.
    pub kind: ControlType,
    /// The values of the `CONTENT_TYPE` fields, in wire order.
    pub content_types: Vec<Bytes>,
}

impl ControlFrame {
    /// A control frame with at most one content type.
    #[must_use]
    pub fn new(kind: ControlType, content_type: Option<&[u8]>) -> Self {
        ControlFrame {
            kind,
            content_types: content_type
                .map(|ct| vec![Bytes::copy_from_slice(ct)])
                .unwrap_or_default(),
        }
    }

    /// The control length `L` (type word plus fields), saturating at `u32::MAX`.
    fn control_len(&self) -> u32 {
        let fields = self.content_types.iter().fold(0u64, |acc, ct| {
            acc.saturating_add(8)
                .saturating_add(u64::try_from(ct.len()).unwrap_or(u64::MAX))
        });
        u32::try_from(fields.saturating_add(4)).unwrap_or(u32::MAX)
    }

    /// Number of bytes [`encode`](Self::encode) appends (escape and length words included).
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.content_types
            .iter()
            .fold(CONTROL_HEADER + MIN_CONTROL_FRAME, |acc, ct| {
                acc.saturating_add(8).saturating_add(ct.len())
            })
    }

    /// Appends the frame to `dst`: escape (0), control length, control type, then one
    /// `CONTENT_TYPE` field per content type. The control length is computed from the fields.
    ///
    /// Content types are expected to be short (a peer enforces [`MAX_CONTENT_TYPE`]); lengths
    /// that do not fit a `u32` are saturated rather than panicking.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u32(0);
        dst.put_u32(self.control_len());
        dst.put_u32(self.kind.code());
        for ct in &self.content_types {
            dst.put_u32(FIELD_CONTENT_TYPE);
            dst.put_u32(u32::try_from(ct.len()).unwrap_or(u32::MAX));
            dst.put_slice(ct);
        }
    }

    /// True if the frame carries no content type, or carries `content_type` among its content
    /// types (libfstrm: a frame without content types "matches anything").
    #[must_use]
    pub fn matches_content_type(&self, content_type: &[u8]) -> bool {
        self.content_types.is_empty()
            || self
                .content_types
                .iter()
                .any(|ct| ct.as_ref() == content_type)
    }
}

/// One item produced by [`FrameDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One data frame payload (never empty), split from the read buffer without copying.
    Data(Bytes),
    /// A control frame.
    Control(ControlFrame),
    /// A data frame longer than the decoder's maximum. Its `len` payload bytes were (or are
    /// being) skipped without buffering; the stream continues after them.
    Oversize {
        /// The length announced by the frame's prefix.
        len: u32,
    },
}

/// Appends a data frame (4-byte big-endian length, then the payload) to `dst`.
///
/// A data frame cannot be empty (length 0 is the control escape) nor longer than `u32::MAX`:
/// for such payloads nothing is written, so the stream is never corrupted.
pub fn encode_data(payload: &[u8], dst: &mut BytesMut) {
    let Ok(len) = u32::try_from(payload.len()) else {
        return;
    };
    if len == 0 {
        return;
    }
    dst.reserve(payload.len().saturating_add(LEN_PREFIX));
    dst.put_u32(len);
    dst.put_slice(payload);
}

/// Which part of a frame the stream ended in (see [`FrameError::Truncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The 4-byte length prefix (or escape word).
    LengthPrefix,
    /// The 4-byte control length after an escape.
    ControlHeader,
    /// The payload of a control frame.
    ControlFrame,
    /// The payload of a data frame.
    DataFrame,
    /// The payload of an oversize data frame being skipped.
    OversizeDataFrame,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::LengthPrefix => "frame length prefix",
            FramePart::ControlHeader => "control frame header",
            FramePart::ControlFrame => "control frame",
            FramePart::DataFrame => "data frame",
            FramePart::OversizeDataFrame => "oversize data frame (being skipped)",
        })
    }
}

/// What went wrong on the wire while splitting frames.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The control length exceeds [`MAX_CONTROL_FRAME`].
    #[error("control frame length {len} exceeds the {MAX_CONTROL_FRAME}-byte maximum")]
    ControlTooLong {
        /// The control length read from the wire.
        len: u32,
    },
    /// The control length is below 4, so there is not even room for the control type.
    #[error(
        "control frame length {len} is too short: a control frame needs at least 4 bytes for its type"
    )]
    ControlTooShort {
        /// The control length read from the wire.
        len: u32,
    },
    /// A control field header or value runs past the end of the control payload.
    #[error(
        "control frame field runs past the end of the control frame: it needs {needed} bytes but only {available} remain"
    )]
    ControlFieldOverrun {
        /// Bytes the field header (8) or the field value needs.
        needed: u64,
        /// Bytes left in the control payload at that point.
        available: usize,
    },
    /// A `CONTENT_TYPE` field is longer than [`MAX_CONTENT_TYPE`].
    #[error("content-type field of {len} bytes exceeds the {MAX_CONTENT_TYPE}-byte maximum")]
    ControlFieldTooLong {
        /// The field length read from the wire.
        len: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("{part} truncated: {have} of {needed} bytes before end of stream")]
    Truncated {
        /// Which part of the frame was cut.
        part: FramePart,
        /// Bytes that part (or the whole control frame) needed.
        needed: u64,
        /// Bytes that arrived.
        have: u64,
    },
    /// An I/O error from the underlying reader (tokio-util's `Decoder` requires this).
    #[error("I/O error while reading Frame Streams data: {message}")]
    Io {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The error's message.
        message: String,
    },
}

impl From<io::Error> for FrameError {
    fn from(err: io::Error) -> Self {
        FrameError::Io {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// Lossless on every supported platform (usize is at least 32 bits); saturates otherwise.
fn u32_to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn usize_to_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Reads a big-endian u32 at `offset` if four bytes are there.
fn peek_u32(buf: &[u8], offset: usize) -> Option<u32> {
    buf.get(offset..)
        .and_then(|rest| rest.first_chunk::<4>())
        .map(|b| u32::from_be_bytes(*b))
}

/// Parses a control payload (type word and fields).
fn parse_control(payload: &[u8]) -> Result<ControlFrame, FrameError> {
    let Some((kind, mut rest)) = payload.split_first_chunk::<4>() else {
        return Err(FrameError::ControlTooShort {
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        });
    };
    let kind = ControlType::from(u32::from_be_bytes(*kind));
    let mut content_types = Vec::new();
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<8>() else {
            return Err(FrameError::ControlFieldOverrun {
                needed: 8,
                available: rest.len(),
            });
        };
        let (ftype, flen) = header.split_at(4);
        let ftype = peek_u32(ftype, 0).unwrap_or(0);
        let flen = peek_u32(flen, 0).unwrap_or(0);
        let Some((value, next)) = after.split_at_checked(u32_to_usize(flen)) else {
            return Err(FrameError::ControlFieldOverrun {
                needed: u64::from(flen),
                available: after.len(),
            });
        };
        if ftype == FIELD_CONTENT_TYPE {
            if value.len() > MAX_CONTENT_TYPE {
                return Err(FrameError::ControlFieldTooLong { len: flen });
            }
            content_types.push(Bytes::copy_from_slice(value));
        }
        rest = next;
    }
    Ok(ControlFrame {
        kind,
        content_types,
    })
}

/// Splits a Frame Streams byte stream into [`Frame`]s (a [`tokio_util::codec::Decoder`]).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_data_frame: usize,
    /// Bytes of an oversize data frame still to discard.
    skip_remaining: u64,
    /// Announced length of the oversize frame being skipped (for error messages).
    skip_len: u32,
}

impl FrameDecoder {
    /// A decoder delivering data frames of at most `max_data_frame` bytes; longer ones become
    /// [`Frame::Oversize`] and are skipped. A maximum of 0 makes every data frame oversize.
    #[must_use]
    pub fn new(max_data_frame: usize) -> Self {
        FrameDecoder {
            max_data_frame,
            skip_remaining: 0,
            skip_len: 0,
        }
    }

    /// The configured maximum data frame length.
    #[must_use]
    pub fn max_data_frame(&self) -> usize {
        self.max_data_frame
    }

    /// True while the payload of an oversize frame is being discarded.
    #[must_use]
    pub fn is_skipping(&self) -> bool {
        self.skip_remaining != 0
    }

    /// Discards as much of the oversize frame being skipped as `src` holds.
    fn skip(&mut self, src: &mut BytesMut) {
        let n = usize::try_from(self.skip_remaining)
            .unwrap_or(usize::MAX)
            .min(src.len());
        src.advance(n);
        self.skip_remaining = self.skip_remaining.saturating_sub(usize_to_u64(n));
    }

    fn decode_control(src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(clen) = peek_u32(src, LEN_PREFIX) else {
            return Ok(None);
        };
        let clen_usize = u32_to_usize(clen);
        if clen_usize > MAX_CONTROL_FRAME {
            return Err(FrameError::ControlTooLong { len: clen });
        }
        if clen_usize < MIN_CONTROL_FRAME {
            return Err(FrameError::ControlTooShort { len: clen });
        }
        // At most 8 + 512 bytes: no overflow possible, but stay checked.
        let total = CONTROL_HEADER.saturating_add(clen_usize);
        let Some(payload) = src.get(CONTROL_HEADER..total) else {
            src.reserve(total.saturating_sub(src.len()));
            return Ok(None);
        };
        // Parse before consuming so that a malformed frame leaves the buffer untouched.
        let frame = parse_control(payload)?;
        src.advance(total);
        Ok(Some(Frame::Control(frame)))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_DATA_FRAME)
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.skip_remaining != 0 {
            self.skip(src);
            if self.skip_remaining != 0 {
                return Ok(None);
            }
        }
        let Some(len) = peek_u32(src, 0) else {
            return Ok(None);
        };
        if len == 0 {
            return Self::decode_control(src);
        }
        let len_usize = u32_to_usize(len);
        if len_usize > self.max_data_frame {
            src.advance(LEN_PREFIX);
            self.skip_len = len;
            self.skip_remaining = u64::from(len);
            self.skip(src);
            return Ok(Some(Frame::Oversize { len }));
        }
        // len <= max_data_frame, so reserving for it is bounded by configuration.
        let Some(total) = len_usize.checked_add(LEN_PREFIX) else {
            return Ok(None);
        };
        if src.len() < total {
            src.reserve(total.saturating_sub(src.len()));
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        Ok(Some(Frame::Data(src.split_to(len_usize).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let have = usize_to_u64(src.len());
        if self.skip_remaining != 0 {
            let needed = u64::from(self.skip_len);
            return Err(FrameError::Truncated {
                part: FramePart::OversizeDataFrame,
                needed,
                have: needed.saturating_sub(self.skip_remaining),
            });
        }
        if src.is_empty() {
            return Ok(None);
        }
        let err = match peek_u32(src, 0) {
            None => FrameError::Truncated {
                part: FramePart::LengthPrefix,
                needed: 4,
                have,
            },
            Some(0) => match peek_u32(src, LEN_PREFIX) {
                None => FrameError::Truncated {
                    part: FramePart::ControlHeader,
                    needed: 8,
                    have,
                },
                Some(clen) => FrameError::Truncated {
                    part: FramePart::ControlFrame,
                    needed: u64::from(clen).saturating_add(8),
                    have,
                },
            },
            Some(len) => FrameError::Truncated {
                part: FramePart::DataFrame,
                needed: u64::from(len),
                have: have.saturating_sub(4),
            },
        };
        Err(err)
    }
}

/// Which handshake mode the peer chose with its first control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// READY/ACCEPT/START … STOP/FINISH: the reader answers.
    Bidirectional,
    /// START … STOP: the reader never writes.
    Unidirectional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitFirst,
    /// ACCEPT sent; waiting for START (bidirectional only).
    AwaitStart,
    Streaming(Mode),
    Stopped(Mode),
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitFirst => "awaiting READY or START",
            State::AwaitStart => "awaiting START after ACCEPT",
            State::Streaming(_) => "streaming data frames",
            State::Stopped(Mode::Bidirectional) => "stopped (bidirectional stream after STOP)",
            State::Stopped(Mode::Unidirectional) => "awaiting START after STOP",
        }
    }
}

/// What the caller must do after a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this control frame to the peer now (ACCEPT after READY).
    Reply(ControlFrame),
    /// START accepted; data frames follow.
    Started,
    /// An unknown control type after START: ignore it (the caller may count it).
    Ignored,
    /// STOP received. `reply` is FINISH in bidirectional mode (write it, then close), `None` in
    /// unidirectional mode (close a socket, or keep reading a file: another START may follow).
    Finished {
        /// The FINISH frame to write, if any.
        reply: Option<ControlFrame>,
    },
}

/// A handshake violation by the peer. The connection (or file) should be abandoned.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// READY or START offered only content types other than ours.
    #[error("content type mismatch: {got} offered {offered}, this reader only accepts {expected}")]
    ContentTypeMismatch {
        /// The control frame that offered them (READY or START).
        got: ControlType,
        /// The offered content types, lossily decoded, quoted and escaped.
        offered: String,
        /// Our content type, quoted and escaped.
        expected: String,
    },
    /// A control frame that is not allowed in the current state.
    #[error("unexpected {got} control frame while {state}")]
    UnexpectedControl {
        /// The control type received.
        got: ControlType,
        /// The state it arrived in.
        state: &'static str,
    },
    /// A data frame arrived before the START control frame.
    #[error(
        "data frame received before START: the sender did not perform the Frame Streams handshake"
    )]
    DataBeforeStart,
    /// A data frame arrived after STOP (and before any new START).
    #[error("data frame received after STOP")]
    DataAfterStop,
}

/// Quotes and escapes a byte string for a log line.
fn quote(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// The reader side of the Frame Streams handshake (see the module docs for the policy).
#[derive(Debug, Clone)]
pub struct ReaderHandshake {
    content_type: &'static [u8],
    state: State,
}

impl ReaderHandshake {
    /// A handshake accepting `content_type` (normally [`DNSTAP_CONTENT_TYPE`]).
    #[must_use]
    pub fn new(content_type: &'static [u8]) -> Self {
        ReaderHandshake {
            content_type,
            state: State::AwaitFirst,
        }
    }

    fn mismatch(&self, frame: &ControlFrame) -> HandshakeError {
        let offered = frame
            .content_types
            .iter()
            .map(|ct| quote(ct))
            .collect::<Vec<_>>()
            .join(", ");
        HandshakeError::ContentTypeMismatch {
            got: frame.kind,
            offered,
            expected: quote(self.content_type),
        }
    }

    fn unexpected(&self, frame: &ControlFrame) -> HandshakeError {
        HandshakeError::UnexpectedControl {
            got: frame.kind,
            state: self.state.describe(),
        }
    }

    fn start(&mut self, frame: &ControlFrame, mode: Mode) -> Result<Step, HandshakeError> {
        if !frame.matches_content_type(self.content_type) {
            return Err(self.mismatch(frame));
        }
        self.state = State::Streaming(mode);
        Ok(Step::Started)
    }

    /// Feeds one control frame received from the peer.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] if the frame breaks the reader policy (see the module docs); the
    /// state is left unchanged and the caller should close the connection without replying.
    pub fn on_control(&mut self, frame: &ControlFrame) -> Result<Step, HandshakeError> {
        match (self.state, frame.kind) {
            (State::AwaitFirst, ControlType::Ready) => {
                if !frame.matches_content_type(self.content_type) {
                    return Err(self.mismatch(frame));
                }
                self.state = State::AwaitStart;
                Ok(Step::Reply(ControlFrame::new(
                    ControlType::Accept,
                    Some(self.content_type),
                )))
            }
            (State::AwaitFirst | State::Stopped(Mode::Unidirectional), ControlType::Start) => {
                self.start(frame, Mode::Unidirectional)
            }
            (State::AwaitStart, ControlType::Start) => self.start(frame, Mode::Bidirectional),
            (State::Streaming(mode), ControlType::Stop) => {
                self.state = State::Stopped(mode);
                let reply = match mode {
                    Mode::Bidirectional => Some(ControlFrame::new(ControlType::Finish, None)),
                    Mode::Unidirectional => None,
                };
                Ok(Step::Finished { reply })
            }
            (State::Streaming(_), ControlType::Unknown(_)) => Ok(Step::Ignored),
            _ => Err(self.unexpected(frame)),
        }
    }

    /// Checks that a data frame (or an oversize one) may arrive now.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::DataBeforeStart`] before START, [`HandshakeError::DataAfterStop`]
    /// after STOP.
    pub fn on_data(&self) -> Result<(), HandshakeError> {
        match self.state {
            State::Streaming(_) => Ok(()),
            State::Stopped(_) => Err(HandshakeError::DataAfterStop),
            State::AwaitFirst | State::AwaitStart => Err(HandshakeError::DataBeforeStart),
        }
    }

    /// The mode chosen by the peer, once its first control frame has been accepted.
    #[must_use]
    pub fn mode(&self) -> Option<Mode> {
        match self.state {
            State::AwaitFirst => None,
            State::AwaitStart => Some(Mode::Bidirectional),
            State::Streaming(mode) | State::Stopped(mode) => Some(mode),
        }
    }

    /// True between an accepted START and the following STOP.
    #[must_use]
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }
}

/// Either kind of failure of a Frame Streams reader.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The byte stream could not be split into frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frames broke the handshake.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// Result of running decoder and handshake over an in-memory stream.
#[derive(Debug, Default)]
struct Outcome {
    /// Every frame accepted by the handshake, in order.
    frames: Vec<Frame>,
    /// The handshake step of every accepted control frame.
    steps: Vec<Step>,
    /// The first error, which ended decoding.
    error: Option<StreamError>,
}

impl Outcome {
    fn accept(&mut self, hs: &mut ReaderHandshake, frame: Frame) -> Result<(), StreamError> {
        match &frame {
            Frame::Data(_) | Frame::Oversize { .. } => hs.on_data()?,
            Frame::Control(control) => {
                let step = hs.on_control(control)?;
                self.steps.push(step);
            }
        }
        self.frames.push(frame);
        Ok(())
    }
}

/// Runs a decoder and a handshake over `bytes`, fed `chunk` bytes at a time, as a file reader
/// would (the stream continues after a unidirectional STOP).
fn run_stream(bytes: &[u8], chunk: usize, max_data_frame: usize) -> Outcome {
    let mut out = Outcome::default();
    let mut decoder = FrameDecoder::new(max_data_frame);
    let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
    let mut buf = BytesMut::new();
    let result = (|| -> Result<(), StreamError> {
        for piece in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf)? {
                out.accept(&mut hs, frame)?;
            }
        }
        while let Some(frame) = decoder.decode_eof(&mut buf)? {
            out.accept(&mut hs, frame)?;
        }
        Ok(())
    })();
    out.error = result.err();
    out
}

/// Decodes a whole in-memory stream with [`FrameDecoder`] and [`ReaderHandshake`] (for dnstap),
/// as a file reader would, stopping at the first error. Returns every frame the handshake
/// accepted (data, oversize and control frames) and the error message, if any. Never panics;
/// meant for fuzzing and tools.
pub fn decode_all(bytes: &[u8], max_data_frame: usize) -> (Vec<Frame>, Result<(), String>) {
    let out = run_stream(bytes, bytes.len(), max_data_frame);
    let result = match out.error {
        Some(err) => Err(err.to_string()),
        None => Ok(()),
    };
    (out.frames, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use tapbus_testsupport::testdata;

    fn read(path: impl AsRef<Path>) -> Vec<u8> {
        let path = path.as_ref();
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn malformed(name: &str) -> Vec<u8> {
        read(testdata::path(&format!("malformed/{name}")))
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The helper from the brief: frames accepted and the error text.
    fn drive(bytes: &[u8], chunk: usize) -> (Vec<Frame>, Option<String>) {
        let out = run_stream(bytes, chunk, DEFAULT_MAX_DATA_FRAME);
        (out.frames, out.error.map(|e| e.to_string()))
    }

    fn data_count(frames: &[Frame]) -> usize {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Data(_)))
            .count()
    }

    fn oversize(frames: &[Frame]) -> Vec<u32> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Oversize { len } => Some(*len),
                _ => None,
            })
            .collect()
    }

    /// Runs `check` on the outcome for every chunk size of the brief, and checks that `drive`
    /// and `decode_all` agree with it.
    fn for_chunks(bytes: &[u8], max: usize, check: impl Fn(usize, &Outcome)) {
        let mut reference: Option<(Vec<Frame>, Option<StreamError>)> = None;
        for chunk in [1, 7, 4096, bytes.len().max(1)] {
            let out = run_stream(bytes, chunk, max);
            check(chunk, &out);
            match &reference {
                None => reference = Some((out.frames.clone(), out.error.clone())),
                Some((frames, error)) => {
                    assert_eq!(&out.frames, frames, "chunk {chunk}");
                    assert_eq!(&out.error, error, "chunk {chunk}");
                }
            }
        }
        if max == DEFAULT_MAX_DATA_FRAME {
            let (frames, error) = drive(bytes, 7);
            let (all_frames, all_result) = decode_all(bytes, max);
            assert_eq!(frames, all_frames);
            assert_eq!(error, all_result.err());
        }
    }

    fn run_malformed(name: &str, check: impl Fn(&Outcome)) {
        let bytes = malformed(name);
        for_chunks(&bytes, DEFAULT_MAX_DATA_FRAME, |chunk, out| {
            let _ = chunk;
            check(out)
        });
    }

    fn encoded(frame: &ControlFrame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len());
        buf.to_vec()
    }

    // ---- encoding -------------------------------------------------------------------------

    #[test]
    fn encode_ready_matches_worked_example() {
        let mut expected = hex("00000000 00000022 00000004 00000001 00000016");
        expected.extend_from_slice(b"protobuf:dnstap.Dnstap");
        assert_eq!(expected.len(), 42);
        let ready = ControlFrame::new(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE));
        assert_eq!(encoded(&ready), expected);
    }

    #[test]
    fn encode_accept_and_start_match_worked_example() {
        for (kind, code) in [(ControlType::Accept, "01"), (ControlType::Start, "02")] {
            let mut expected = hex(&format!("00000000 00000022 000000{code} 00000001 00000016"));
            expected.extend_from_slice(DNSTAP_CONTENT_TYPE);
            assert_eq!(
                encoded(&ControlFrame::new(kind, Some(DNSTAP_CONTENT_TYPE))),
                expected
            );
        }
    }

    #[test]
    fn encode_stop_and_finish_are_12_bytes() {
        let stop = encoded(&ControlFrame::new(ControlType::Stop, None));
        assert_eq!(stop, hex("00000000 00000004 00000003"));
        let finish = encoded(&ControlFrame::new(ControlType::Finish, None));
        assert_eq!(finish, hex("00000000 00000004 00000005"));
    }

    #[test]
    fn encode_multiple_content_types_computes_length() {
        let frame = ControlFrame {
            kind: ControlType::Ready,
            content_types: vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
        };
        let bytes = encoded(&frame);
        assert_eq!(
            bytes,
            hex("00000000 00000017 00000004 00000001 00000001 61 00000001 00000002 6263")
        );
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = FrameDecoder::default().decode(&mut buf).unwrap();
        assert_eq!(decoded, Some(Frame::Control(frame)));
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_data_roundtrip_and_empty_payload_writes_nothing() {
        let mut buf = BytesMut::new();
        encode_data(b"hello", &mut buf);
        assert_eq!(&buf[..], &hex("00000005 68656c6c6f")[..]);
        encode_data(b"", &mut buf);
        assert_eq!(buf.len(), 9);
        let mut dec = FrameDecoder::default();
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Data(Bytes::from_static(b"hello")))
        );
        assert_eq!(dec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn control_type_codes_roundtrip() {
        let named = [
            (ControlType::Accept, 1),
            (ControlType::Start, 2),
            (ControlType::Stop, 3),
            (ControlType::Ready, 4),
            (ControlType::Finish, 5),
        ];
        for (kind, code) in named {
            assert_eq!(kind.code(), code);
            assert_eq!(ControlType::from(code), kind);
            assert_eq!(u32::from(kind), code);
        }
        assert_eq!(ControlType::from(0), ControlType::Unknown(0));
        assert_eq!(ControlType::from(42).code(), 42);
        assert_eq!(ControlType::Unknown(42).to_string(), "unknown type 42");
    }

    // ---- decoder unit behaviour -------------------------------------------------------------

    #[test]
    fn decoder_waits_for_whole_frame_without_consuming() {
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&hex("00000005 6865")[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 6);
        assert!(buf.capacity() >= 9);
        buf.extend_from_slice(b"llo");
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Data(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn control_length_limits() {
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&hex("00000000 00000201")[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::ControlTooLong { len: 513 })
        );
        // Sticky: nothing consumed, same error again.
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::ControlTooLong { len: 513 })
        );
        let mut buf = BytesMut::from(&hex("00000000 00000003 000000")[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::ControlTooShort { len: 3 })
        );
        // Exactly 512 is allowed (an unknown field fills it).
        let mut frame = hex("00000000 00000200 00000002 00000063 000001f4");
        frame.resize(8 + 512, 0);
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Control(ControlFrame::new(ControlType::Start, None)))
        );
    }

    #[test]
    fn control_field_errors() {
        let mut dec = FrameDecoder::default();
        // Field header cut short: 3 bytes after the type.
        let mut buf = BytesMut::from(&hex("00000000 00000007 00000002 000000")[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::ControlFieldOverrun {
                needed: 8,
                available: 3
            })
        );
        // Content type of 257 bytes.
        let mut frame = hex("00000000 0000010d 00000002 00000001 00000101");
        frame.resize(8 + 4 + 8 + 257, b'x');
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::ControlFieldTooLong { len: 257 })
        );
        // Unknown field types are dropped, not errors.
        let mut buf = BytesMut::from(
            &hex("00000000 00000016 00000002 00000007 00000002 ffff 00000001 00000000")[..],
        );
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Control(ControlFrame {
                kind: ControlType::Start,
                content_types: vec![Bytes::new()],
            }))
        );
    }

    #[test]
    fn truncation_messages_are_clear() {
        let cases: [(&str, &str); 5] = [
            (
                "0000",
                "frame length prefix truncated: 2 of 4 bytes before end of stream",
            ),
            (
                "00000000 0000",
                "control frame header truncated: 6 of 8 bytes before end of stream",
            ),
            (
                "00000000 00000004 0000",
                "control frame truncated: 10 of 12 bytes before end of stream",
            ),
            (
                "00000005 6865",
                "data frame truncated: 2 of 5 bytes before end of stream",
            ),
            (
                "00100001 00",
                "oversize data frame (being skipped) truncated: 1 of 1048577 bytes before end of stream",
            ),
        ];
        for (input, message) in cases {
            let mut dec = FrameDecoder::default();
            let mut buf = BytesMut::from(&hex(input)[..]);
            let mut result = dec.decode_eof(&mut buf);
            if let Ok(Some(Frame::Oversize { .. })) = result {
                result = dec.decode_eof(&mut buf);
            }
            assert_eq!(result.map_err(|e| e.to_string()), Err(message.to_string()));
        }
        let mut dec = FrameDecoder::default();
        assert_eq!(dec.decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    fn oversize_is_skipped_across_chunks() {
        let mut stream = BytesMut::new();
        encode_data(b"ok1", &mut stream);
        encode_data(&[7u8; 50], &mut stream);
        encode_data(b"ok2", &mut stream);
        let bytes = stream.to_vec();
        for chunk in 1..=bytes.len() {
            let mut dec = FrameDecoder::new(10);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in bytes.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    frames.push(f);
                }
                assert!(buf.len() <= 12, "oversize payload was buffered");
            }
            assert_eq!(dec.decode_eof(&mut buf), Ok(None));
            assert_eq!(
                frames,
                vec![
                    Frame::Data(Bytes::from_static(b"ok1")),
                    Frame::Oversize { len: 50 },
                    Frame::Data(Bytes::from_static(b"ok2")),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn io_error_conversion_keeps_kind_and_message() {
        let err = FrameError::from(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"));
        assert_eq!(
            err,
            FrameError::Io {
                kind: io::ErrorKind::ConnectionReset,
                message: "peer reset".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "I/O error while reading Frame Streams data: peer reset"
        );
    }

    // ---- handshake --------------------------------------------------------------------------

    fn ctl(kind: ControlType, ct: Option<&[u8]>) -> ControlFrame {
        ControlFrame::new(kind, ct)
    }

    #[test]
    fn bidirectional_handshake() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        assert_eq!(hs.mode(), None);
        assert_eq!(hs.on_data(), Err(HandshakeError::DataBeforeStart));
        let step = hs.on_control(&ctl(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE)));
        let accept = ctl(ControlType::Accept, Some(DNSTAP_CONTENT_TYPE));
        assert_eq!(step, Ok(Step::Reply(accept.clone())));
        assert_eq!(
            accept.content_types,
            vec![Bytes::from_static(DNSTAP_CONTENT_TYPE)]
        );
        assert_eq!(hs.mode(), Some(Mode::Bidirectional));
        assert!(!hs.is_streaming());
        assert_eq!(hs.on_data(), Err(HandshakeError::DataBeforeStart));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))),
            Ok(Step::Started)
        );
        assert!(hs.is_streaming());
        assert_eq!(hs.on_data(), Ok(()));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Unknown(9), None)),
            Ok(Step::Ignored)
        );
        assert_eq!(
            hs.on_control(&ctl(ControlType::Stop, None)),
            Ok(Step::Finished {
                reply: Some(ctl(ControlType::Finish, None))
            })
        );
        assert!(!hs.is_streaming());
        assert_eq!(hs.on_data(), Err(HandshakeError::DataAfterStop));
        assert!(matches!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Err(HandshakeError::UnexpectedControl {
                got: ControlType::Start,
                ..
            })
        ));
    }

    #[test]
    fn ready_content_type_negotiation() {
        // READY with no content type: ACCEPT still carries ours.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        assert_eq!(
            hs.on_control(&ctl(ControlType::Ready, None)),
            Ok(Step::Reply(ctl(
                ControlType::Accept,
                Some(DNSTAP_CONTENT_TYPE)
            )))
        );
        // READY listing several types including ours: ACCEPT carries only ours.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let ready = ControlFrame {
            kind: ControlType::Ready,
            content_types: vec![
                Bytes::from_static(b"protobuf:other"),
                Bytes::from_static(DNSTAP_CONTENT_TYPE),
            ],
        };
        assert_eq!(
            hs.on_control(&ready),
            Ok(Step::Reply(ctl(
                ControlType::Accept,
                Some(DNSTAP_CONTENT_TYPE)
            )))
        );
        // READY with only another type: mismatch, no reply.
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let err = hs
            .on_control(&ctl(ControlType::Ready, Some(b"protobuf:other")))
            .unwrap_err();
        assert_eq!(
            err,
            HandshakeError::ContentTypeMismatch {
                got: ControlType::Ready,
                offered: "\"protobuf:other\"".into(),
                expected: "\"protobuf:dnstap.Dnstap\"".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "content type mismatch: READY offered \"protobuf:other\", this reader only accepts \"protobuf:dnstap.Dnstap\""
        );
        assert_eq!(hs.mode(), None);
    }

    #[test]
    fn start_after_accept_checks_content_type() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        hs.on_control(&ctl(ControlType::Ready, None)).unwrap();
        assert!(matches!(
            hs.on_control(&ctl(ControlType::Start, Some(b"x"))),
            Err(HandshakeError::ContentTypeMismatch {
                got: ControlType::Start,
                ..
            })
        ));
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Ok(Step::Started)
        );
        assert_eq!(hs.mode(), Some(Mode::Bidirectional));
    }

    #[test]
    fn unidirectional_rules() {
        let mut hs = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        // Unknown control and STOP before START are errors.
        for kind in [
            ControlType::Unknown(42),
            ControlType::Stop,
            ControlType::Accept,
            ControlType::Finish,
        ] {
            assert!(matches!(
                hs.on_control(&ctl(kind, None)),
                Err(HandshakeError::UnexpectedControl { got, state: "awaiting READY or START" })
                    if got == kind
            ));
        }
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, None)),
            Ok(Step::Started)
        );
        assert_eq!(hs.mode(), Some(Mode::Unidirectional));
        for kind in [
            ControlType::Start,
            ControlType::Ready,
            ControlType::Accept,
            ControlType::Finish,
        ] {
            let err = hs.on_control(&ctl(kind, None)).unwrap_err();
            assert_eq!(
                err,
                HandshakeError::UnexpectedControl {
                    got: kind,
                    state: "streaming data frames"
                }
            );
        }
        assert_eq!(
            hs.on_control(&ctl(ControlType::Stop, None)),
            Ok(Step::Finished { reply: None })
        );
        assert_eq!(hs.on_data(), Err(HandshakeError::DataAfterStop));
        assert!(hs.on_control(&ctl(ControlType::Unknown(7), None)).is_err());
        assert!(hs.on_control(&ctl(ControlType::Ready, None)).is_err());
        // A new START after STOP (concatenated files) is fine in unidirectional mode.
        assert_eq!(
            hs.on_control(&ctl(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))),
            Ok(Step::Started)
        );
        assert!(hs.is_streaming());
    }

    // ---- fixtures: malformed ----------------------------------------------------------------

    #[test]
    fn malformed_truncated_mid_frame() {
        run_malformed("truncated-mid-frame.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 6);
            assert!(matches!(
                out.error,
                Some(StreamError::Frame(FrameError::Truncated {
                    part: FramePart::DataFrame,
                    ..
                }))
            ));
        });
    }

    #[test]
    fn malformed_truncated_mid_length() {
        run_malformed("truncated-mid-length.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 6);
            assert_eq!(
                out.error,
                Some(StreamError::Frame(FrameError::Truncated {
                    part: FramePart::LengthPrefix,
                    needed: 4,
                    have: 2
                }))
            );
        });
    }

    #[test]
    fn malformed_truncated_control_frame() {
        run_malformed("truncated-control-frame.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert_eq!(
                out.error,
                Some(StreamError::Frame(FrameError::Truncated {
                    part: FramePart::ControlFrame,
                    needed: 42,
                    have: 35
                }))
            );
        });
    }

    #[test]
    fn malformed_frame_length_huge() {
        run_malformed("frame-length-huge.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 1);
            assert_eq!(oversize(&out.frames), vec![0xFFFF_FFF0]);
            assert!(matches!(
                out.error,
                Some(StreamError::Frame(FrameError::Truncated {
                    part: FramePart::OversizeDataFrame,
                    needed: 0xFFFF_FFF0,
                    ..
                }))
            ));
        });
    }

    #[test]
    fn malformed_frame_length_exceeds_file() {
        run_malformed("frame-length-exceeds-file.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 6);
            assert_eq!(oversize(&out.frames), vec![1_048_577]);
            let err = out.error.as_ref().map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some(
                    "oversize data frame (being skipped) truncated: 40 of 1048577 bytes before end of stream"
                )
            );
        });
    }

    #[test]
    fn malformed_control_frame_too_long() {
        run_malformed("control-frame-too-long.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert_eq!(
                out.error,
                Some(StreamError::Frame(FrameError::ControlTooLong { len: 642 }))
            );
        });
    }

    #[test]
    fn malformed_control_field_overrun() {
        run_malformed("control-field-overrun.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert_eq!(
                out.error,
                Some(StreamError::Frame(FrameError::ControlFieldOverrun {
                    needed: 200,
                    available: 4
                }))
            );
        });
    }

    #[test]
    fn malformed_wrong_content_type() {
        run_malformed("wrong-content-type.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert!(matches!(
                &out.error,
                Some(StreamError::Handshake(HandshakeError::ContentTypeMismatch { got: ControlType::Start, offered, .. }))
                    if offered == "\"protobuf:other\""
            ));
        });
    }

    #[test]
    fn malformed_no_start() {
        run_malformed("no-start.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert_eq!(
                out.error,
                Some(StreamError::Handshake(HandshakeError::DataBeforeStart))
            );
        });
    }

    #[test]
    fn malformed_unknown_control_type() {
        run_malformed("unknown-control-type.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 4);
            assert_eq!(
                out.steps,
                vec![Step::Started, Step::Ignored, Step::Finished { reply: None }]
            );
            assert!(out.frames.contains(&Frame::Control(ControlFrame::new(
                ControlType::Unknown(42),
                Some(DNSTAP_CONTENT_TYPE)
            ))));
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_start_no_content_type() {
        run_malformed("start-no-content-type.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 6);
            assert_eq!(
                out.frames.first(),
                Some(&Frame::Control(ControlFrame::new(ControlType::Start, None)))
            );
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_two_streams_concatenated() {
        run_malformed("two-streams-concatenated.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 8);
            assert_eq!(
                out.steps,
                vec![
                    Step::Started,
                    Step::Finished { reply: None },
                    Step::Started,
                    Step::Finished { reply: None }
                ]
            );
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_zero_length_data_frame() {
        // The empty "data frame" is the escape; the next length (0x70 = 112) is read as a control
        // length and the protobuf bytes as a control payload whose first "field" overruns it.
        run_malformed("zero-length-data-frame.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 2);
            assert!(matches!(
                out.error,
                Some(StreamError::Frame(FrameError::ControlFieldOverrun { .. }))
            ));
        });
    }

    #[test]
    fn malformed_empty() {
        run_malformed("empty.fstrm", |out| {
            assert!(out.frames.is_empty());
            assert!(out.steps.is_empty());
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_start_only() {
        run_malformed("start-only.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 0);
            assert_eq!(out.steps, vec![Step::Started]);
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_start_stop_only() {
        run_malformed("start-stop-only.fstrm", |out| {
            assert_eq!(data_count(&out.frames), 0);
            assert_eq!(
                out.steps,
                vec![Step::Started, Step::Finished { reply: None }]
            );
            assert_eq!(out.error, None);
        });
    }

    #[test]
    fn malformed_payload_oddities_are_framing_clean() {
        // These files are broken at the dnstap/DNS level only; framing is intact.
        for (name, frames) in [
            ("bad-dns-wire.fstrm", 7),
            ("compression-loop.fstrm", 4),
            ("dnstap-semantic-oddities.fstrm", 6),
            ("not-protobuf-data-frame.fstrm", 5),
        ] {
            run_malformed(name, |out| {
                assert_eq!(data_count(&out.frames), frames, "{name}");
                assert_eq!(out.error, None, "{name}");
                assert_eq!(out.steps.last(), Some(&Step::Finished { reply: None }));
            });
        }
    }

    #[test]
    fn every_malformed_file_has_an_expectation() {
        let dir = testdata::dir().join("malformed");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".fstrm"))
            .collect();
        names.sort();
        let covered = [
            "bad-dns-wire.fstrm",
            "compression-loop.fstrm",
            "control-field-overrun.fstrm",
            "control-frame-too-long.fstrm",
            "dnstap-semantic-oddities.fstrm",
            "empty.fstrm",
            "frame-length-exceeds-file.fstrm",
            "frame-length-huge.fstrm",
            "no-start.fstrm",
            "not-protobuf-data-frame.fstrm",
            "start-no-content-type.fstrm",
            "start-only.fstrm",
            "start-stop-only.fstrm",
            "truncated-control-frame.fstrm",
            "truncated-mid-frame.fstrm",
            "truncated-mid-length.fstrm",
            "two-streams-concatenated.fstrm",
            "unknown-control-type.fstrm",
            "wrong-content-type.fstrm",
            "zero-length-data-frame.fstrm",
        ];
        assert_eq!(names, covered, "a malformed fixture was added or removed");
        // And none of them panics or hangs with a tiny maximum either.
        for name in names {
            let bytes = malformed(&name);
            for chunk in [1, 3, 64] {
                let _ = run_stream(&bytes, chunk, 16);
            }
        }
    }

    // ---- fixtures: captures -----------------------------------------------------------------

    fn captures() -> Vec<PathBuf> {
        let paths: Vec<PathBuf> = testdata::captures()
            .iter()
            .map(|n| testdata::path(n))
            .collect();
        assert!(paths.len() >= 8, "captures missing: {paths:?}");
        paths
    }

    /// `frames.data_frames` from the capture's summary, read without a JSON dependency.
    fn summary_data_frames(capture: &Path) -> usize {
        let mut name = capture.as_os_str().to_owned();
        name.push(".summary.json");
        let text = String::from_utf8(read(PathBuf::from(name))).unwrap();
        let frames = &text[text.find("\"frames\"").unwrap()..];
        let field = &frames[frames.find("\"data_frames\"").unwrap() + "\"data_frames\"".len()..];
        let digits: String = field
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().unwrap()
    }

    #[test]
    fn captures_decode_to_summary_counts() {
        for path in captures() {
            let bytes = read(&path);
            let expected = summary_data_frames(&path);
            let big = bytes.len() > 4 * 1024 * 1024;
            let chunks: &[usize] = if big {
                &[4096, usize::MAX]
            } else {
                &[1, 7, 4096, usize::MAX]
            };
            for &chunk in chunks {
                let out = run_stream(&bytes, chunk.min(bytes.len()), DEFAULT_MAX_DATA_FRAME);
                assert_eq!(out.error, None, "{}", path.display());
                assert_eq!(
                    data_count(&out.frames),
                    expected,
                    "{} chunk {chunk}",
                    path.display()
                );
                assert_eq!(
                    out.steps,
                    vec![Step::Started, Step::Finished { reply: None }]
                );
            }
        }
    }

    #[test]
    fn bulk_capture_has_100002_frames() {
        let bytes = read(testdata::path("bulk-100k.fstrm"));
        let (frames, result) = decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
        assert_eq!(result, Ok(()));
        assert_eq!(data_count(&frames), 100_002);
        let payload: usize = frames
            .iter()
            .map(|f| match f {
                Frame::Data(d) => d.len() + 4,
                Frame::Control(c) => c.encoded_len(),
                Frame::Oversize { .. } => 0,
            })
            .sum();
        assert_eq!(payload, bytes.len());
    }

    #[test]
    fn oversize_mid_stream_with_small_max() {
        let bytes = read(testdata::path("unbound.fstrm"));
        let (all, result) = decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
        assert_eq!(result, Ok(()));
        let sizes: Vec<usize> = all
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d.len()),
                _ => None,
            })
            .collect();
        let small: Vec<&Frame> = all
            .iter()
            .filter(|f| matches!(f, Frame::Data(d) if d.len() <= 100))
            .collect();
        let big = sizes.iter().filter(|&&n| n > 100).count();
        assert!(
            !small.is_empty() && big > 0,
            "capture does not straddle 100"
        );
        for_chunks(&bytes, 100, |chunk, out| {
            assert_eq!(out.error, None, "chunk {chunk}");
            let delivered: Vec<&Frame> = out
                .frames
                .iter()
                .filter(|f| matches!(f, Frame::Data(_)))
                .collect();
            assert_eq!(delivered, small);
            assert_eq!(oversize(&out.frames).len(), big);
            assert_eq!(
                out.steps,
                vec![Step::Started, Step::Finished { reply: None }]
            );
        });
    }

    // ---- robustness -------------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut start = BytesMut::new();
        ControlFrame::new(ControlType::Start, Some(DNSTAP_CONTENT_TYPE)).encode(&mut start);
        for len in (0..300).chain([512, 1024, 4099]) {
            for round in 0..8 {
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                // Make small lengths and escapes likely so that every path is exercised.
                if round % 2 == 1 {
                    let mut i = 0;
                    while i + 4 <= bytes.len() {
                        let v = match rng.below(4) {
                            0 => 0,
                            1 => rng.below(16),
                            2 => rng.below(600),
                            _ => rng.below(usize::MAX),
                        } as u32;
                        bytes[i..i + 4].copy_from_slice(&v.to_be_bytes());
                        i += 4 + rng.below(24);
                    }
                }
                if round >= 4 {
                    bytes.splice(0..0, start.iter().copied());
                }
                for chunk in [1, 7, 4096] {
                    let _ = drive(&bytes, chunk);
                    let _ = run_stream(&bytes, chunk, rng.below(64));
                }
                let _ = decode_all(&bytes, 32);
            }
        }
    }

    #[test]
    fn mutated_capture_never_panics() {
        let original = malformed("two-streams-concatenated.fstrm");
        let mut rng = XorShift(42);
        for _ in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[i] ^= 1 << rng.below(8),
                    1 => bytes[i] = 0,
                    _ => bytes.truncate(i),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let chunk = [1, 7, 4096][rng.below(3)];
            let (frames, _) = drive(&bytes, chunk);
            let data: usize = frames
                .iter()
                .map(|f| match f {
                    Frame::Data(d) => d.len(),
                    _ => 0,
                })
                .sum();
            assert!(data <= bytes.len());
            assert_eq!(drive(&bytes, bytes.len().max(1)), drive(&bytes, chunk));
        }
    }

    // ---- tokio-util integration ---------------------------------------------------------------

    /// An AsyncRead that hands out at most `chunk` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let end = (self.pos + self.chunk)
                .min(self.data.len())
                .min(self.pos + buf.remaining());
            buf.put_slice(&self.data[self.pos..end]);
            self.pos = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn collect_framed(
        data: Vec<u8>,
        chunk: usize,
        max: usize,
    ) -> (Vec<Frame>, Option<FrameError>, usize) {
        use futures_core::Stream;
        let reader = Trickle {
            data,
            pos: 0,
            chunk,
        };
        let mut framed = tokio_util::codec::FramedRead::new(reader, FrameDecoder::new(max));
        let mut frames = Vec::new();
        let mut max_capacity = 0;
        loop {
            let item =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut framed).poll_next(cx)).await;
            max_capacity = max_capacity.max(framed.read_buffer().capacity());
            match item {
                None => return (frames, None, max_capacity),
                Some(Ok(frame)) => frames.push(frame),
                Some(Err(e)) => return (frames, Some(e), max_capacity),
            }
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn framed_read_skips_oversize_without_buffering_it() {
        let mut stream = BytesMut::new();
        ControlFrame::new(ControlType::Start, Some(DNSTAP_CONTENT_TYPE)).encode(&mut stream);
        encode_data(b"before", &mut stream);
        encode_data(&vec![0xAB; 8 * 1024 * 1024], &mut stream);
        encode_data(b"after", &mut stream);
        ControlFrame::new(ControlType::Stop, None).encode(&mut stream);
        let (frames, err, capacity) =
            block_on(collect_framed(stream.to_vec(), 64 * 1024, 1024 * 1024));
        assert_eq!(err, None);
        assert_eq!(
            frames,
            vec![
                Frame::Control(ControlFrame::new(
                    ControlType::Start,
                    Some(DNSTAP_CONTENT_TYPE)
                )),
                Frame::Data(Bytes::from_static(b"before")),
                Frame::Oversize {
                    len: 8 * 1024 * 1024
                },
                Frame::Data(Bytes::from_static(b"after")),
                Frame::Control(ControlFrame::new(ControlType::Stop, None)),
            ]
        );
        assert!(capacity < 512 * 1024, "read buffer grew to {capacity}");
    }

    #[test]
    fn framed_read_reports_truncation_at_eof() {
        let bytes = malformed("truncated-mid-frame.fstrm");
        let (frames, err, _) = block_on(collect_framed(bytes, 100, DEFAULT_MAX_DATA_FRAME));
        assert_eq!(data_count(&frames), 6);
        assert!(matches!(
            err,
            Some(FrameError::Truncated {
                part: FramePart::DataFrame,
                ..
            })
        ));
        let capture = read(testdata::path("kresd.fstrm"));
        let expected = summary_data_frames(&testdata::path("kresd.fstrm"));
        let (frames, err, _) = block_on(collect_framed(capture, 1000, DEFAULT_MAX_DATA_FRAME));
        assert_eq!(err, None);
        assert_eq!(data_count(&frames), expected);
    }
}
