//! Frame Streams reader: any bytes, as a whole stream through `fstrm::decode_all` (decoder +
//! reader handshake) and through `FrameDecoder` fed in two chunks split at `data[0]`.
//! Neither may panic, and the chunked decode must give the same frames and error as the
//! one-shot decode.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tapbus_proto::fstrm::{self, Frame, FrameDecoder, FrameError};
use tokio_util::codec::Decoder;

/// A small maximum, so that oversize frames (skipped, not buffered) are reached too.
const MAX: usize = 4096;

fn run(chunks: &[&[u8]]) -> (Vec<Frame>, Option<FrameError>) {
    let mut dec = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in chunks {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    loop {
        match dec.decode_eof(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (frames, _result) = fstrm::decode_all(data, MAX);
    for f in &frames {
        if let Frame::Data(d) = f {
            assert!(
                !d.is_empty() && d.len() <= MAX,
                "data frame of {} bytes",
                d.len()
            );
        }
    }

    let split = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let (a, b) = data.split_at(split);
    let chunked = run(&[a, b]);
    let whole = run(&[data]);
    assert_eq!(chunked, whole, "split at {split}");
    for f in &whole.0 {
        match f {
            Frame::Data(d) => assert!(!d.is_empty() && d.len() <= MAX),
            Frame::Oversize { len } => assert!(*len as usize > MAX),
            Frame::Control(_) => {}
        }
    }
});
