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
//!
//! # Where things live
//!
//! The data flow is: DNS server --dnstap Frame Streams--> broker: bytes -> frames (codec) ->
//! handshake -> data frames -> events. This module covers every arrow up to the data frames
//! (turning one into an event is [`crate::event`]'s job), one file per seam; every public item
//! is re-exported here, so callers only ever name `fstrm::X`:
//!
//! * `frame.rs`: the [`Frame`] and [`ControlFrame`] types, control payload parsing, and the
//!   writer side (encoding: [`ControlFrame::encode`], [`encode_data`]).
//! * `codec.rs`: bytes -> frames, the [`FrameDecoder`] codec and its [`FrameError`]s.
//! * `handshake.rs`: frames -> handshake -> data frames, the [`ReaderHandshake`] state machine.
//! * `replay.rs`: the whole arrow for an in-memory stream, [`decode_all`].
//!
//! The tests that read the repository's test data (malformed inputs, real captures) are in
//! `proto/tests/it/fstrm.rs`; the in-memory ones sit beside the code they test.

mod codec;
mod frame;
mod handshake;
mod replay;

pub use codec::{FrameDecoder, FrameError, FramePart};
pub use frame::{ControlFrame, ControlType, Frame, encode_data};
pub use handshake::{HandshakeError, Mode, ReaderHandshake, Step};
pub use replay::{Outcome, StreamError, decode_all, run_stream};

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
