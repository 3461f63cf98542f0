//! Integration tests of `tapbus-proto` against the real dnstap captures in
//! `testdata/dnstap` (see its `MANIFEST.md`).
//!
//! * [`differential`]: every capture is split with `fstrm::decode_all`, every data frame is
//!   encoded with `event::encode`, and each event is compared field by field with the output
//!   of an independent decoder (golang-dnstap + miekg/dns, `X.expected.jsonl`).
//! * [`fstrm`]: Frame Streams framing and handshake over the broken inputs in `malformed/`
//!   (exact frames, steps and errors, every chunk size) and over the captures.
//! * [`malformed`]: the hand-built broken inputs in `malformed/`.
//! * [`edns`]: EDNS details (ECS, EDE, BADVERS) decoded from real traffic.
//! * [`hickory`]: every DNS message also parsed by hickory-proto, a second oracle.
//!
//! Every event any of these tests produces is validated against `event::SCHEMA`.

mod differential;
mod edns;
mod fstrm;
mod golden;
mod hickory;
mod malformed;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;
use tapbus_proto::event::{self, EventError, Summary};
use tapbus_proto::fstrm::{DEFAULT_MAX_DATA_FRAME, Frame, decode_all};

/// A test-data file (`testdata/dnstap/NAME` in the repository; see its `MANIFEST.md`).
pub fn testdata(name: &str) -> PathBuf {
    tapbus_testsupport::testdata::path(name)
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The data frames of a capture file, in order, and the reader's verdict on the stream.
pub fn data_frames(path: &Path) -> (Vec<Bytes>, Result<(), String>) {
    let bytes = read(path);
    let (frames, result) = decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
    let data = frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Data(b) => Some(b),
            _ => None,
        })
        .collect();
    (data, result)
}

/// One encoded frame: the parsed JSON event and the summary, or the encoder's error.
pub type Encoded = Result<(Value, Summary), EventError>;

/// The event JSON Schema, compiled once (with `format` assertions on).
pub fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(event::SCHEMA).expect("SCHEMA is JSON");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("SCHEMA compiles")
    })
}

/// Schema errors of one event, as readable lines (empty when valid).
pub fn schema_errors(v: &Value) -> Vec<String> {
    validator()
        .iter_errors(v)
        .map(|e| format!("{} at {}: {e}", e.schema_path, e.instance_path))
        .collect()
}

/// Encodes every data frame of `path` (peer name = file name). Every event is checked to be
/// valid JSON and valid against the schema; the test panics with a report otherwise.
pub fn encode_file(path: &Path) -> (Vec<Encoded>, Result<(), String>) {
    let (frames, result) = data_frames(path);
    let peer = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(4096);
    let mut bad: Vec<String> = Vec::new();
    let mut n_bad = 0usize;
    let encoded = frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| {
            out.clear();
            let summary = event::encode(frame, &peer, &mut out)?;
            let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "{}: frame {i}: event is not JSON ({e}): {}",
                    path.display(),
                    String::from_utf8_lossy(&out)
                )
            });
            let errs = schema_errors(&v);
            if !errs.is_empty() {
                n_bad += 1;
                if bad.len() < 5 {
                    bad.push(format!("frame {i}: {}\n    event: {v}", errs.join("; ")));
                }
            }
            Ok((v, summary))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{}: {n_bad} events violate event.schema.json; first ones:\n  {}",
        path.display(),
        bad.join("\n  ")
    );
    (encoded, result)
}

/// Reads `X.expected.jsonl` (or `.jsonl.gz`) as parsed lines.
pub fn expected_lines(capture: &Path) -> Vec<Value> {
    use std::io::BufRead;
    let plain = PathBuf::from(format!("{}.expected.jsonl", capture.display()));
    let gz = PathBuf::from(format!("{}.expected.jsonl.gz", capture.display()));
    let reader: Box<dyn BufRead> = if plain.exists() {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&plain).expect("open expected"),
        ))
    } else {
        let f = std::fs::File::open(&gz)
            .unwrap_or_else(|e| panic!("no expected file for {}: {e}", capture.display()));
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(f)))
    };
    reader
        .lines()
        .map(|l| l.expect("read expected line"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).expect("expected line is JSON"))
        .collect()
}

/// `X.summary.json` of a capture.
pub fn summary_json(capture: &Path) -> Value {
    let p = PathBuf::from(format!("{}.summary.json", capture.display()));
    serde_json::from_slice(&read(&p)).expect("summary is JSON")
}

/// The validator is strict: `format` is asserted, unknown keys and wrong types are refused.
#[test]
fn schema_rejects_bad_events() {
    let (events, _) = encode_file(&testdata("malformed/bad-dns-wire.fstrm"));
    let good = events[0].as_ref().expect("event").0.clone();
    assert!(schema_errors(&good).is_empty());
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let bad = [
        mutate(&|v| v["network"]["query-ip"] = "999.1.1.1".into()),
        mutate(&|v| v["network"]["response-ip"] = "::g".into()),
        mutate(&|v| v["dns"]["extra"] = 1.into()),
        mutate(&|v| v["dns"]["id"] = 70000.into()),
        mutate(&|v| v["dnstap"]["timestamp-rfc3339ns"] = "2026-01-01T00:00:00Z".into()),
        mutate(&|v| v["edns"] = "x".into()),
    ];
    for b in &bad {
        assert!(!schema_errors(b).is_empty(), "accepted: {b}");
    }
}
