//! Bad input ends only its own connection, with one log line naming the peer and the
//! reason, and is counted; a valid capture sent at the same time arrives complete.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::harness::*;

/// Sends raw bytes as one connection, then waits until the broker closes it.
fn send_raw(sock: &std::path::Path, bytes: &[u8]) {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // The broker may close the connection before everything is written; that is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// What a malformed fixture does to the broker, from its description in
/// `testdata/dnstap/malformed/malformed.json` (and its `.summary.json`).
struct Fixture {
    file: &'static str,
    /// The reason its connection is closed with (`None`: the stream is sound to its end).
    closed: Option<&'static str>,
    /// Reasons counted in `tapbus_malformed_total` without closing the connection: data
    /// frames skipped as not dnstap, control frames ignored.
    counted: &'static [&'static str],
    /// Events published whose DNS message does not parse (`tapbus_dns_malformed_total`).
    bad_dns: usize,
    /// Data frames over the 1 MiB limit, skipped (`tapbus_frames_total{kind="oversize"}`).
    oversize: usize,
}

const fn sound(file: &'static str) -> Fixture {
    Fixture {
        file,
        closed: None,
        counted: &[],
        bad_dns: 0,
        oversize: 0,
    }
}

const fn closed(file: &'static str, reason: &'static str) -> Fixture {
    Fixture {
        closed: Some(reason),
        ..sound(file)
    }
}

const FIXTURES: &[Fixture] = &[
    // Seven well-formed dnstap messages; five DNS messages do not parse: the 7-byte query,
    // the response cut inside its answer, the 64 bytes of garbage, QDCOUNT=5 with one
    // question and the empty query (the summary's 5 "(unparsable)").
    Fixture {
        bad_dns: 5,
        ..sound("bad-dns-wire.fstrm")
    },
    // The two pointer loops do not parse; the forward pointer to a valid name does.
    Fixture {
        bad_dns: 2,
        ..sound("compression-loop.fstrm")
    },
    closed("control-field-overrun.fstrm", "control_field_overrun"),
    // 642 bytes, over the 512-byte limit.
    closed("control-frame-too-long.fstrm", "control_too_long"),
    // Message without type, Dnstap without type, Dnstap.type=99 are skipped; the INET6
    // query with a 3-byte address, Message.type=99 and the valid query become events.
    Fixture {
        counted: &["missing_message_type", "missing_type", "unsupported_type"],
        ..sound("dnstap-semantic-oddities.fstrm")
    },
    sound("empty.fstrm"),
    // The 1 MiB + 1 frame is skipped as oversize, and the stream ends inside it.
    Fixture {
        oversize: 1,
        ..closed("frame-length-exceeds-file.fstrm", "truncated")
    },
    Fixture {
        oversize: 1,
        ..closed("frame-length-huge.fstrm", "truncated")
    },
    closed("no-start.fstrm", "data_before_start"),
    // Two of the five frames are not protobuf.
    Fixture {
        counted: &["bad_protobuf", "bad_protobuf"],
        ..sound("not-protobuf-data-frame.fstrm")
    },
    sound("start-no-content-type.fstrm"),
    sound("start-only.fstrm"),
    sound("start-stop-only.fstrm"),
    closed("truncated-control-frame.fstrm", "truncated"),
    closed("truncated-mid-frame.fstrm", "truncated"),
    closed("truncated-mid-length.fstrm", "truncated"),
    sound("two-streams-concatenated.fstrm"),
    // The control frame of type 42 is ignored and counted; the stream goes on.
    Fixture {
        counted: &["unknown_control"],
        ..sound("unknown-control-type.fstrm")
    },
    closed("wrong-content-type.fstrm", "content_type_mismatch"),
    // The zero length is the control escape: the next frame's length is read as a control
    // frame's, and its bytes as control fields that run past the frame.
    closed("zero-length-data-frame.fstrm", "control_field_overrun"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_close_only_their_connection() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let tcp = free_port();
    let mut broker = Broker::start_unix(&sock, Some(tcp), nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;

    let mdir = tapbus_testsupport::testdata::dir().join("malformed");
    let mut files: Vec<_> = std::fs::read_dir(&mdir)
        .expect("malformed dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fstrm"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let mut known: Vec<String> = FIXTURES.iter().map(|f| f.file.to_string()).collect();
    known.sort();
    assert_eq!(
        names, known,
        "every malformed fixture has its expectation below"
    );
    // What the broker must publish from each malformed file: the events before the damage.
    let expected_bad: usize = files.iter().map(|f| reference_events(f).len()).sum();

    // The valid capture over TCP while every malformed file goes in over unix.
    let valid = capture("unbound.fstrm");
    let reference = reference_events(&valid);
    let v = valid.clone();
    let good = tokio::task::spawn_blocking(move || fstrm_replay_tcp(&v, tcp));
    let s = sock.clone();
    let fs = files.clone();
    let bad = tokio::task::spawn_blocking(move || {
        for f in &fs {
            send_raw(&s, &std::fs::read(f).expect("read fixture"));
        }
    });
    good.await.expect("good sender");
    bad.await.expect("bad sender");

    let got = sub
        .collect(reference.len() + expected_bad, Duration::from_secs(10))
        .await;
    let from_tcp: Vec<_> = got
        .iter()
        .filter(|(_, e)| {
            e["dnstap"]["peer-name"]
                .as_str()
                .is_some_and(|p| p.starts_with("tcp:"))
        })
        .collect();
    assert_eq!(
        from_tcp.len(),
        reference.len(),
        "valid capture must arrive complete"
    );
    for ((_, ev), want) in from_tcp.iter().zip(&reference) {
        assert_eq!(key(ev), key(want));
    }
    let schema = validator();
    for (_, ev) in &got {
        assert_valid(&schema, ev);
    }
    assert_eq!(
        got.len() - from_tcp.len(),
        expected_bad,
        "events before the damage in malformed files"
    );
    assert!(
        broker.is_running(),
        "broker must survive every malformed input"
    );

    // Counted by reason, exactly as the fixtures are made, and one log line for each
    // connection closed, naming the peer and the reason.
    let mut counted: std::collections::BTreeMap<&str, usize> = Default::default();
    for f in FIXTURES {
        for reason in f.closed.iter().chain(f.counted) {
            *counted.entry(reason).or_default() += 1;
        }
    }
    for (reason, n) in &counted {
        let labels = [format!("reason=\"{reason}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        broker.wait_metric("tapbus_malformed_total", &labels, *n as f64);
        assert_eq!(
            broker.metric("tapbus_malformed_total", &labels),
            *n as f64,
            "malformed reason {reason}\n{}",
            broker.metrics()
        );
    }
    assert_eq!(
        broker.metric("tapbus_malformed_total", &[]),
        counted.values().sum::<usize>() as f64,
        "no other reason counted\n{}",
        broker.metrics()
    );
    let broken = FIXTURES.iter().filter(|f| f.closed.is_some()).count();
    assert_eq!(broken, 10);
    let log = broker.log_text();
    let closed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("dnstap connection closed:"))
        .collect();
    assert_eq!(closed.len(), broken, "one line per broken stream:\n{log}");
    for l in &closed {
        assert!(l.contains("peer=unix:"), "log line names the peer: {l}");
        assert!(l.contains("reason="), "log line names the reason: {l}");
    }
    let bad_dns: usize = FIXTURES.iter().map(|f| f.bad_dns).sum();
    assert_eq!(bad_dns, 7);
    assert_eq!(
        broker.metric("tapbus_dns_malformed_total", &[]),
        bad_dns as f64,
        "events whose DNS message does not parse"
    );
    let oversize: usize = FIXTURES.iter().map(|f| f.oversize).sum();
    assert_eq!(
        broker.metric("tapbus_frames_total", &["kind=\"oversize\""]),
        oversize as f64
    );
    assert!(!log.contains("panicked"), "{log}");

    // Oversize frames: with a 512-byte limit the big frames are skipped, counted, and the
    // connection goes on to deliver the rest.
    drop(broker);
    let broker = Broker::start_env(
        &["-i", &format!("tcp://127.0.0.1:{tcp}"), "-o", nats.url()],
        &[("TAPBUS_MAX_FRAME_SIZE", "512")],
    );
    let file = capture("bind-auth.fstrm");
    let sizes: Vec<usize> = data_frames(&file).iter().map(|f| f.len()).collect();
    let small = sizes.iter().filter(|&&n| n <= 512).count();
    let big = sizes.len() - small;
    assert!(big > 0 && small > 0, "fixture has both sizes");
    replay_tcp(&file, tcp).await;
    let got = sub.collect(small, Duration::from_secs(10)).await;
    assert_eq!(got.len(), small);
    broker.wait_metric("tapbus_frames_total", &["kind=\"oversize\""], big as f64);
    assert_eq!(broker.metric("tapbus_malformed_total", &[]), 0.0);
}

/// Before any input has gone wrong, `/metrics` already has `tapbus_malformed_total` at 0
/// for every reason of every input, so dashboards and alerts see 0 instead of no data.
#[test]
fn every_malformed_reason_is_on_metrics_at_zero_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start(&["-i", &format!("unix://{}", sock.display()), "-o", "stdout"]);
    let text = broker.metrics();
    for reason in tapbus_broker::metrics::MALFORMED_REASONS {
        let line = format!("tapbus_malformed_total{{input=\"unix\",reason=\"{reason}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    // The other families with a known label set: frame kinds and drop reasons.
    for line in [
        "tapbus_frames_total{input=\"unix\",kind=\"data\"} 0".to_string(),
        "tapbus_frames_total{input=\"unix\",kind=\"control\"} 0".to_string(),
        "tapbus_frames_total{input=\"unix\",kind=\"oversize\"} 0".to_string(),
    ]
    .into_iter()
    .chain(
        ["queue_full", "publish_error", "too_large", "shutdown"]
            .iter()
            .map(|r| format!("tapbus_dropped_total{{output=\"stdout\",reason=\"{r}\"}} 0")),
    ) {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    // Every reason the fixtures below produce is one of them.
    for f in FIXTURES {
        for r in f.closed.iter().chain(f.counted) {
            assert!(
                tapbus_broker::metrics::MALFORMED_REASONS.contains(r),
                "{}: reason {r} is not exported from the start",
                f.file
            );
        }
    }
}
