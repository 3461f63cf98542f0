//! The frames themselves, both directions: the [`Frame`] and [`ControlFrame`] types, the parsing
//! of a control payload (for the codec, on the arrow bytes -> frames), and the writer side of
//! the arrow DNS server --Frame Streams--> broker, encoding frames to bytes
//! ([`ControlFrame::encode`], [`encode_data`]; used for the handshake replies and by tools).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::FrameError;
use super::{CONTROL_HEADER, FIELD_CONTENT_TYPE, LEN_PREFIX, MAX_CONTENT_TYPE, MIN_CONTROL_FRAME};

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

/// One item produced by [`FrameDecoder`](super::FrameDecoder).
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

/// Lossless on every supported platform (usize is at least 32 bits); saturates otherwise.
pub(super) fn u32_to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Reads a big-endian u32 at `offset` if four bytes are there.
pub(super) fn peek_u32(buf: &[u8], offset: usize) -> Option<u32> {
    buf.get(offset..)
        .and_then(|rest| rest.first_chunk::<4>())
        .map(|b| u32::from_be_bytes(*b))
}

/// Parses a control payload (type word and fields).
pub(super) fn parse_control(payload: &[u8]) -> Result<ControlFrame, FrameError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstrm::{DNSTAP_CONTENT_TYPE, FrameDecoder};
    use tokio_util::codec::Decoder;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
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
}
