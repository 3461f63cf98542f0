//! Every real capture, replayed with fstrm_replay over unix and TCP, arrives on NATS
//! message for message, in order, equal to the in-process decode, with the right subject.

use std::time::Duration;

use crate::harness::*;

const CAPTURES: &[&str] = &[
    "bind-auth.fstrm",
    "bind-resolver.fstrm",
    "dnsdist.fstrm",
    "dnsdist-tcp.fstrm",
    "kresd.fstrm",
    "unbound.fstrm",
    "unbound-tcp.fstrm",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_over_unix_and_tcp_arrive_complete() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let tcp = free_port();
    let broker = Broker::start_unix(&sock, Some(tcp), nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let schema = validator();
    let mut total = 0usize;
    for name in CAPTURES {
        let file = capture(name);
        let reference = reference_events(&file);
        assert_eq!(
            reference.len(),
            expected_count(name),
            "{name}: in-process decode count"
        );
        for transport in ["unix", "tcp"] {
            if transport == "unix" {
                replay_unix(&file, &sock).await
            } else {
                replay_tcp(&file, tcp).await
            }
            let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
            assert_eq!(
                got.len(),
                reference.len(),
                "{name} over {transport}: messages received"
            );
            for (i, ((subject, ev), want)) in got.iter().zip(&reference).enumerate() {
                assert_valid(&schema, ev);
                assert_eq!(
                    key(ev),
                    key(want),
                    "{name} over {transport}: message {i} differs"
                );
                assert_eq!(
                    subject,
                    &expected_subject(ev),
                    "{name}: subject of message {i}"
                );
                let peer = ev["dnstap"]["peer-name"].as_str().unwrap_or("");
                assert!(
                    peer.starts_with(transport),
                    "peer-name {peer:?} over {transport}"
                );
            }
            total += got.len();
        }
    }
    // Nothing more arrives than was sent.
    assert!(sub.collect(1, Duration::from_millis(300)).await.is_empty());
    // The counters agree with what the subscriber saw.
    broker.wait_metric("tapbus_published_total", &["output=\"nats\""], total as f64);
    assert_eq!(broker.metric("tapbus_events_total", &[]), total as f64);
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    assert_eq!(broker.metric("tapbus_malformed_total", &[]), 0.0);
    assert_eq!(
        broker.metric("tapbus_connections_total", &[]),
        2.0 * CAPTURES.len() as f64
    );
    let log = broker.log_text();
    assert!(!log.contains("WARN"), "no warnings expected:\n{log}");
}

/// A file input publishes the whole capture and the broker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_input_publishes_everything_and_exits() {
    let nats = Nats::start();
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let file = capture("bulk-100k.fstrm");
    let n = expected_count("bulk-100k.fstrm");
    let url = nats.url().to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args([
                "-i",
                &format!("file://{}", file.display()),
                "-o",
                &url,
                "--metrics-listen",
                "",
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run broker")
    });
    let got = sub.collect(n, Duration::from_secs(20)).await;
    let status = status.await.expect("join");
    assert!(status.success(), "exit status {status}");
    assert_eq!(got.len(), n);
    let queries = got
        .iter()
        .filter(|(s, _)| s == "dnstap.unbound-bulk.client_query")
        .count();
    assert_eq!(queries, 50001);
}

/// A replay whose output cannot deliver (no NATS listening, a 1 s drain deadline) reads
/// the file completely, counts every event as dropped, and exits 1 saying so: a script
/// must not take an incomplete replay for a finished one.
#[test]
fn a_replay_whose_output_dropped_events_fails() {
    let name = "unbound.fstrm";
    let n = expected_count(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["-i", &format!("file://{}", capture(name).display())])
        .args(["-o", &format!("nats://127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", ""])
        .env("TAPBUS_DRAIN_TIMEOUT", "1s")
        .output()
        .expect("run broker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "output nats dropped {n} of {n} events: the replay is incomplete"
        )),
        "{err}"
    );
}

/// Many senders at once: every connection's stream arrives complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let frames = std::sync::Arc::new(data_frames(&capture("dnsdist.fstrm")));
    let conns = 32;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (frames, sock) = (frames.clone(), sock.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::UnixStream::connect(&sock)
                .await
                .expect("connect");
            write_stream(&mut s, &frames).await;
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let n = conns * frames.len();
    // Every frame of every connection is read and decoded...
    broker.wait_metric("tapbus_events_total", &[], n as f64);
    // ...and each event is either published or counted as dropped (32 senders at full
    // speed can outrun a debug-build NATS output: then its queue overflows, by design).
    let got = sub.collect(n, Duration::from_secs(5)).await;
    let published = broker.metric("tapbus_published_total", &[]);
    let dropped = broker.metric("tapbus_dropped_total", &["reason=\"queue_full\""]);
    assert_eq!(
        published + dropped,
        n as f64,
        "published {published} + dropped {dropped}"
    );
    assert_eq!(
        got.len() as f64,
        published,
        "the subscriber gets every published event"
    );
    // Per connection, what arrives is in the order of the capture.
    let reference: Vec<String> = reference_events(&capture("dnsdist.fstrm"))
        .iter()
        .map(key)
        .collect();
    let mut per_peer: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (_, ev) in &got {
        let peer = ev["dnstap"]["peer-name"].as_str().unwrap_or("").to_string();
        per_peer.entry(peer).or_default().push(key(ev));
    }
    for (peer, evs) in per_peer {
        let mut it = reference.iter();
        assert!(
            evs.iter().all(|e| it.any(|r| r == e)),
            "events of {peer} are not in capture order"
        );
    }
    assert_eq!(broker.metric("tapbus_connections_total", &[]), conns as f64);
}

/// The test-support unidirectional writer (START, data, STOP, no handshake), as a DNS server
/// without a bidirectional mode writes: every event arrives in order, and the broker sends
/// nothing back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_writer_is_read_completely() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, nats.url());
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let file = capture("kresd.fstrm");
    let reference = reference_events(&file);
    let mut s = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    tapbus_testsupport::fstrm::write_unidirectional(&mut s, &data_frames(&file))
        .await
        .expect("unidirectional stream");
    s.shutdown().await.expect("shutdown the write half");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .expect("the broker closes after EOF")
        .expect("read");
    assert!(
        back.is_empty(),
        "a unidirectional reader answers nothing: {back:?}"
    );
    let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), reference.len());
    for ((_, ev), want) in got.iter().zip(&reference) {
        assert_eq!(key(ev), key(want));
    }
    broker.wait_metric("tapbus_published_total", &[], reference.len() as f64);
    assert_eq!(broker.metric("tapbus_malformed_total", &[]), 0.0);
    assert!(
        !broker.log_text().contains("dnstap connection closed:"),
        "{}",
        broker.log_text()
    );
}
