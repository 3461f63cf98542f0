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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_close_only_their_connection() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let tcp = free_port();
    let mut broker = Broker::start(&[
        "-i",
        &format!("unix://{}", sock.display()),
        "-i",
        &format!("tcp://127.0.0.1:{tcp}"),
        "-o",
        &nats.url,
    ]);
    let mut sub = Sub::start(&nats.url, "dnstap.>").await;

    let mdir = tapbus_testsupport::testdata::dir().join("malformed");
    let mut files: Vec<_> = std::fs::read_dir(&mdir)
        .expect("malformed dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "fstrm"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "malformed fixtures: {}", files.len());
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

    // Counted by reason, and one log line each naming the peer and the reason.
    let log = broker.log_text();
    for reason in [
        "truncated",
        "control_too_long",
        "control_field_overrun",
        "content_type_mismatch",
        "data_before_start",
        "bad_protobuf",
        "missing_type",
        "missing_message_type",
        "unsupported_type",
        "unknown_control",
    ] {
        broker.wait_metric(
            "tapbus_malformed_total",
            &[&format!("reason=\"{reason}\"")],
            1.0,
        );
    }
    let closed: Vec<_> = log
        .lines()
        .filter(|l| l.contains("dnstap connection closed:"))
        .collect();
    assert!(closed.len() >= 9, "one line per broken stream:\n{log}");
    for l in &closed {
        assert!(l.contains("peer=unix:"), "log line names the peer: {l}");
        assert!(l.contains("reason="), "log line names the reason: {l}");
    }
    assert!(broker.metric("tapbus_dns_malformed_total", &[]) >= 5.0);
    assert!(!log.contains("panicked"), "{log}");

    // Oversize frames: with a 512-byte limit the big frames are skipped, counted, and the
    // connection goes on to deliver the rest.
    drop(broker);
    let broker = Broker::start_env(
        &["-i", &format!("tcp://127.0.0.1:{tcp}"), "-o", &nats.url],
        &[("TAPBUS_MAX_FRAME_SIZE", "512")],
    );
    let file = capture("bind-auth.fstrm");
    let sizes: Vec<usize> = data_frames(&file).iter().map(|f| f.len()).collect();
    let small = sizes.iter().filter(|&&n| n <= 512).count();
    let big = sizes.len() - small;
    assert!(big > 0 && small > 0, "fixture has both sizes");
    tokio::task::spawn_blocking(move || fstrm_replay_tcp(&file, tcp))
        .await
        .expect("replay");
    let got = sub.collect(small, Duration::from_secs(10)).await;
    assert_eq!(got.len(), small);
    broker.wait_metric("tapbus_frames_total", &["kind=\"oversize\""], big as f64);
    assert_eq!(broker.metric("tapbus_malformed_total", &[]), 0.0);
}
