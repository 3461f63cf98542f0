//! Frame Streams against the repository's test data, through the public `fstrm` API only: the
//! hand-built broken inputs of `malformed/` (each with its exact expected frames, handshake steps
//! and error, for every chunk size) and the real captures (frame counts from their
//! `X.summary.json`), also read through tokio-util's `FramedRead`.

use std::io;
use std::path::{Path, PathBuf};

use tapbus_proto::fstrm::{
    ControlFrame, ControlType, DEFAULT_MAX_DATA_FRAME, DNSTAP_CONTENT_TYPE, Frame, FrameDecoder,
    FrameError, FramePart, HandshakeError, Outcome, Step, StreamError, decode_all, run_stream,
};
use tapbus_testsupport::testdata;

// ---- the reader, fed in chunks ------------------------------------------------------------

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn malformed(name: &str) -> Vec<u8> {
    read(testdata::path(&format!("malformed/{name}")))
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
    let text = String::from_utf8(read(PathBuf::from(name))).expect("summary is UTF-8");
    let frames = &text[text.find("\"frames\"").expect("summary has \"frames\"")..];
    let field = &frames[frames
        .find("\"data_frames\"")
        .expect("summary has \"data_frames\"")
        + "\"data_frames\"".len()..];
    let digits: String = field
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().expect("data_frames is a number")
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
        let item = std::future::poll_fn(|cx| std::pin::Pin::new(&mut framed).poll_next(cx)).await;
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
        .expect("tokio runtime")
        .block_on(f)
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
