//! The arrow bytes -> frames: [`FrameDecoder`], a [`tokio_util::codec::Decoder`] splitting a
//! Frame Streams byte stream into [`Frame`]s (skipping oversize data frames without buffering
//! them), and the [`FrameError`]s of a broken stream.

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::frame::{Frame, parse_control, peek_u32, u32_to_usize};
use super::{
    CONTROL_HEADER, DEFAULT_MAX_DATA_FRAME, LEN_PREFIX, MAX_CONTENT_TYPE, MAX_CONTROL_FRAME,
    MIN_CONTROL_FRAME,
};

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

fn usize_to_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstrm::{ControlFrame, ControlType, DNSTAP_CONTENT_TYPE, encode_data};
    use bytes::Bytes;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
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
}
