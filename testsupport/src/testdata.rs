//! The test data the repository carries: `testdata/dnstap` at the repository root (see its
//! `MANIFEST.md`). Files stored compressed (`X.gz`, only the bulk capture today) are
//! decompressed once beside the `.gz` on first use (the result is git-ignored), so callers
//! ask for `X` and get a path they can read, replay or hand to a subprocess, with its
//! `X.expected.jsonl` and `X.summary.json` beside it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tapbus_proto::fstrm;

/// The repository's `testdata/dnstap` directory.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/dnstap")
}

/// The path of the test-data file `name` (relative to `testdata/dnstap`, e.g.
/// `"unbound.fstrm"` or `"malformed/empty.fstrm"`), decompressing `name.gz` when only the
/// compressed form is stored. Panics with the path when the file does not exist: a test
/// without its data must fail, never pass vacuously.
pub fn path(name: &str) -> PathBuf {
    let plain = dir().join(name);
    let gz = dir().join(format!("{name}.gz"));
    if gz.exists() {
        return unpack(&gz, name);
    }
    if !plain.exists() {
        panic!(
            "test data {} not found (nor {}.gz)",
            plain.display(),
            plain.display()
        );
    }
    plain
}

/// The names of the real captures at the top of `testdata/dnstap` (`X.fstrm`, also when
/// stored as `X.fstrm.gz`), sorted; pass each to [`path`].
pub fn captures() -> Vec<String> {
    let d = dir();
    let mut v: Vec<String> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("test data directory {}: {e}", d.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| {
            let n = n.strip_suffix(".gz").map(str::to_owned).unwrap_or(n);
            n.ends_with(".fstrm").then_some(n)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Number of messages in a capture according to its summary (the independent decoder's
/// count, `counts.total_messages` in `X.summary.json`).
pub fn expected_count(name: &str) -> usize {
    let p = path(&format!("{name}.summary.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // A tiny scan instead of a JSON dependency: the summary is generated and has one
    // `"total_messages": N` inside `counts`.
    let key = "\"total_messages\":";
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{}: no total_messages", p.display()));
    let digits: String = text[at + key.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("{}: total_messages: {e}", p.display()))
}

/// The JSON events of the capture `name` (as [`path`] finds it), as the broker publishes
/// them: see [`events_in`].
pub fn events(name: &str) -> Vec<Vec<u8>> {
    events_in(&path(name)).collect()
}

/// The JSON events of the capture at `file`, as the broker publishes them
/// (`tapbus_proto::event::encode`, `dnstap.peer-name` [`PEER`]): one per data frame, in
/// order. Frames the encoder refuses are left out, as the broker leaves them out (it
/// counts them as malformed), so a damaged capture gives what the broker would publish.
/// Lazy: `.take(n)` encodes only the first `n`.
pub fn events_in(file: &Path) -> impl Iterator<Item = Vec<u8>> + use<> {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (frames, _) = fstrm::decode_all(&bytes, fstrm::DEFAULT_MAX_DATA_FRAME);
    frames.into_iter().filter_map(|f| {
        let fstrm::Frame::Data(frame) = f else {
            return None;
        };
        let mut out = Vec::new();
        tapbus_proto::event::encode(frame, PEER, &mut out).ok()?;
        Some(out)
    })
}

/// Writes to `dst` `copies` copies of the capture `name`'s data frames, one after the
/// other, as a unidirectional Frame Streams file; copy `k` has every dnstap time (query and
/// response) moved `k` times the capture's span (whole seconds, plus one) later. No two
/// events of the file are alike, and event time runs on from copy to copy as in one longer
/// capture: a replay of it cannot be mistaken for a repetition (Loki keeps one of two
/// identical lines, reduce's records of a window repeated in event time would share ids).
/// Returns the number of data frames written.
pub fn distinct_copies(name: &str, copies: u64, dst: &Path) -> u64 {
    use prost::Message as _;
    use tapbus_proto::dnstap::Dnstap;
    let src = path(name);
    let bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let (frames, _) = fstrm::decode_all(&bytes, fstrm::DEFAULT_MAX_DATA_FRAME);
    let msgs: Vec<Dnstap> = frames
        .into_iter()
        .filter_map(|f| match f {
            fstrm::Frame::Data(d) => Some(d),
            _ => None,
        })
        .map(|d| Dnstap::decode(d).unwrap_or_else(|e| panic!("{name}: a frame: {e}")))
        .collect();
    let secs = |d: &Dnstap| {
        let m = d.message.as_ref();
        [
            m.and_then(|m| m.query_time_sec),
            m.and_then(|m| m.response_time_sec),
        ]
    };
    let all: Vec<u64> = msgs.iter().flat_map(secs).flatten().collect();
    let (lo, hi) = (
        all.iter().min().copied().unwrap_or(0),
        all.iter().max().copied().unwrap_or(0),
    );
    let span = hi - lo + 1;
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(msgs.len() * copies as usize);
    for k in 0..copies {
        for d in &msgs {
            let mut d = d.clone();
            if let Some(m) = d.message.as_mut() {
                for t in [&mut m.query_time_sec, &mut m.response_time_sec] {
                    if let Some(t) = t.as_mut() {
                        *t += k * span;
                    }
                }
            }
            out.push(d.encode_to_vec());
        }
    }
    let file = crate::fstrm::unidirectional_bytes(crate::fstrm::DNSTAP_CONTENT_TYPE, &out);
    std::fs::write(dst, file).unwrap_or_else(|e| panic!("{}: {e}", dst.display()));
    out.len() as u64
}

/// The `dnstap.peer-name` of the events [`events_in`] makes.
pub const PEER: &str = "testdata";

fn unpack(gz: &Path, name: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = dir().join(name);
    let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_else(dir);
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(gz)) {
        (Ok(o), Ok(g)) => match (o.modified(), g.modified()) {
            (Ok(om), Ok(gm)) => om >= gm,
            _ => false,
        },
        _ => false,
    };
    if fresh {
        return out;
    }
    let file = std::fs::File::open(gz).unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    // Write beside and rename, so another test binary unpacking at the same time never
    // reads a half-written file.
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = out_dir.join(format!(
        ".{}.{}.tmp",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

/// The independent decoder's messages of a capture: `X.expected.jsonl` (the golang
/// dnstap CLI's `-j` output, one object per message), parsed. Panics on a missing file or
/// a line that is not JSON.
pub fn expected_messages(name: &str) -> Vec<serde_json::Value> {
    let p = path(&format!("{name}.expected.jsonl"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// The qname of the first question in a message as the golang dnstap CLI prints it
/// (miekg/dns text: `;; QUESTION SECTION:\n;www.test.\tIN\t A`), lowercased, without
/// the trailing dot of a non-root name, a space written `\032` (as tapbus events spell
/// it; miekg writes `\ `, both are RFC 1035 presentation format).
pub fn question_name(text: &str) -> Option<String> {
    let after = text.split(";; QUESTION SECTION:\n;").nth(1)?;
    let name = after
        .split(['\t', '\n'])
        .next()?
        .to_ascii_lowercase()
        .replace("\\ ", "\\032");
    Some(match name.strip_suffix('.') {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => name,
    })
}

/// Per qname, the number of `CLIENT_RESPONSE` messages with a response time in the
/// capture, counted from `X.expected.jsonl` (the independent decoder), for checking
/// reduced records. Responses whose message has no question count under `""`.
pub fn client_responses_per_qname(name: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for m in expected_messages(name) {
        let msg = &m["message"];
        if msg["type"] != "CLIENT_RESPONSE" || msg["response_time"].is_null() {
            continue;
        }
        let q = msg["response_message"]
            .as_str()
            .and_then(question_name)
            .unwrap_or_default();
        *out.entry(q).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_compressed_files_resolve() {
        assert!(path("unbound.fstrm").exists());
        let bulk = path("bulk-100k.fstrm");
        let len = std::fs::metadata(&bulk).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, 11_739_045, "bulk capture unpacked completely");
        assert_eq!(expected_count("bulk-100k.fstrm"), 100_002);
        assert_eq!(expected_count("unbound.fstrm"), 1757);
        let all = captures();
        assert_eq!(all.len(), 8, "{all:?}");
        assert!(all.contains(&"bulk-100k.fstrm".to_string()));
    }

    #[test]
    fn events_are_the_captures_messages_as_the_broker_writes_them() {
        let evs = events("unbound.fstrm");
        assert_eq!(evs.len(), expected_count("unbound.fstrm"));
        let v: serde_json::Value = serde_json::from_slice(&evs[0]).expect("event JSON");
        assert_eq!(v["dnstap"]["peer-name"], PEER, "{v}");
        assert_eq!(events_in(&path("unbound.fstrm")).take(3).count(), 3);
        assert!(events("malformed/empty.fstrm").is_empty());
    }

    #[test]
    fn distinct_copies_differ_only_in_time_and_run_on_in_event_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = dir.path().join("three.fstrm");
        let n = expected_count("unbound.fstrm");
        assert_eq!(distinct_copies("unbound.fstrm", 3, &dst), 3 * n as u64);
        let evs: Vec<serde_json::Value> = events_in(&dst)
            .map(|e| serde_json::from_slice(&e).expect("event JSON"))
            .collect();
        assert_eq!(evs.len(), 3 * n);
        let lines: std::collections::BTreeSet<String> = evs.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 3 * n, "every event differs");
        // The first copy is the capture; the others differ from it in time alone, later
        // than everything before them.
        let first: Vec<serde_json::Value> = events("unbound.fstrm")
            .iter()
            .map(|e| serde_json::from_slice(e).expect("event JSON"))
            .collect();
        assert_eq!(evs[..n], first[..]);
        let ts = |e: &serde_json::Value| e["dnstap"]["timestamp"].as_u64().unwrap_or(0);
        let last_of_first = first.iter().map(ts).max().expect("times");
        for (k, copy) in evs.chunks(n).enumerate().skip(1) {
            assert!(copy.iter().all(|e| ts(e) > last_of_first), "copy {k}");
            for (a, b) in copy.iter().zip(&first) {
                let (mut a, mut b) = (a.clone(), b.clone());
                for e in [&mut a, &mut b] {
                    let t = &mut e["dnstap"];
                    t["timestamp"] = 0.into();
                    t["timestamp-rfc3339ns"] = "".into();
                }
                assert_eq!(a, b, "copy {k}: only the time differs");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not found")]
    fn missing_data_fails_loudly() {
        path("no-such-capture.fstrm");
    }

    #[test]
    fn question_names_as_events_spell_them() {
        let t = ";; opcode: QUERY\n\n;; QUESTION SECTION:\n;WWW.Test.\tIN\t A\n\n;; ANSWER";
        assert_eq!(question_name(t).as_deref(), Some("www.test"));
        assert_eq!(
            question_name(";; QUESTION SECTION:\n;.\tIN\t NS\n").as_deref(),
            Some(".")
        );
        assert_eq!(
            question_name(";; QUESTION SECTION:\n;with\\ space.test.\tIN\t A\n").as_deref(),
            Some("with\\032space.test")
        );
        assert_eq!(question_name(";; opcode: QUERY\n"), None);
    }

    #[test]
    fn per_qname_counts_add_up_to_the_summary() {
        let counts = client_responses_per_qname("unbound.fstrm");
        let p = path("unbound.fstrm.summary.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p).expect("summary")).expect("json");
        let want = v["counts"]["per_type"]["CLIENT_RESPONSE"]
            .as_u64()
            .expect("CLIENT_RESPONSE count");
        assert_eq!(counts.values().sum::<u64>(), want);
        assert!(counts.len() > 10, "{counts:?}");
    }
}
