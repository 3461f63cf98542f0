//! The whole arrow bytes -> frames -> handshake -> data frames for a stream held in memory:
//! [`decode_all`] drives a [`FrameDecoder`] and a [`ReaderHandshake`] as a file reader would
//! (for fuzzing, tools and tests); [`StreamError`] is either kind of failure.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::DNSTAP_CONTENT_TYPE;
use super::codec::{FrameDecoder, FrameError};
use super::frame::Frame;
use super::handshake::{HandshakeError, ReaderHandshake, Step};

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

/// Result of running decoder and handshake over an in-memory stream ([`run_stream`]).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every frame accepted by the handshake, in order.
    pub frames: Vec<Frame>,
    /// The handshake step of every accepted control frame.
    pub steps: Vec<Step>,
    /// The first error, which ended decoding.
    pub error: Option<StreamError>,
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
/// would (the stream continues after a unidirectional STOP). For tools and tests that need
/// the handshake steps or a chunk size; [`decode_all`] is the whole stream at once.
pub fn run_stream(bytes: &[u8], chunk: usize, max_data_frame: usize) -> Outcome {
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
    use crate::fstrm::{ControlFrame, ControlType, DEFAULT_MAX_DATA_FRAME};

    /// The helper from the brief: frames accepted and the error text.
    fn drive(bytes: &[u8], chunk: usize) -> (Vec<Frame>, Option<String>) {
        let out = run_stream(bytes, chunk, DEFAULT_MAX_DATA_FRAME);
        (out.frames, out.error.map(|e| e.to_string()))
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
}
