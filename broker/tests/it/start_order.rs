//! The broker started before its NATS output's server (or before JetStream is on) waits,
//! says once what it waits for (without credentials), and publishes once the server and
//! the stream are there; the books balance (`published + dropped == events`).

use std::time::Duration;

use bytes::Bytes;

use crate::harness::*;

/// Sends `frames` as one dnstap connection (handshake, data, STOP, FINISH).
async fn send(sock: &std::path::Path, frames: &[Bytes]) {
    let s = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect to the broker");
    let mut w = tapbus_testsupport::fstrm::Writer::open(s)
        .await
        .expect("READY, ACCEPT, START");
    w.send(frames).await.expect("frames");
    w.finish().await.expect("STOP, FINISH");
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Starts the broker on a free port where no server listens yet; `body` completes the
/// output table. Returns the broker, its socket and the port.
fn broker_before_nats(dir: &std::path::Path, body: &str) -> (Broker, std::path::PathBuf, u16) {
    let port = free_port();
    let sock = dir.join("dnstap.sock");
    // Credentials in the URL: nats-server without authorization accepts any, and they must
    // never reach the log.
    let cfg = write_broker_config(
        dir,
        &sock,
        "nats",
        &format!("url = \"nats://tapbus:s3cr3t@127.0.0.1:{port}\"\n{body}"),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    (broker, sock, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_output_waits_for_nats_started_later() {
    let frames: Vec<Bytes> = data_frames(&capture("bulk-100k.fstrm"))
        .into_iter()
        .take(500)
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock, port) = broker_before_nats(dir.path(), "");
    let waiting = format!("waiting for NATS at nats://127.0.0.1:{port}");
    broker.wait_log("the waiting line", |l| l.contains(&waiting));
    // Events while NATS is down are held (within the queue) or dropped and counted.
    send(&sock, &frames).await;
    broker.wait_metric("tapbus_events_total", &[], 500.0);

    let nats = tokio::task::spawn_blocking(move || Nats::start_on(port))
        .await
        .expect("start nats");
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    send(&sock, &frames).await;
    let got = sub.collect(500, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 500, "events sent once NATS is up arrive");
    let (published, dropped) = broker.wait_settled("nats", 1000);
    assert_eq!(published + dropped, 1000);
    let log = broker.log_text();
    assert_eq!(count(&log, &waiting), 1, "one waiting line\n{log}");
    assert!(!log.contains("s3cr3t"), "credentials in the log\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_output_waits_for_nats_and_for_jetstream() {
    let frames: Vec<Bytes> = data_frames(&capture("bulk-100k.fstrm"))
        .into_iter()
        .take(500)
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock, port) = broker_before_nats(dir.path(), "jetstream = true\n");
    let waiting_nats = format!("waiting for NATS at nats://127.0.0.1:{port}");
    broker.wait_log("the waiting line", |l| l.contains(&waiting_nats));
    send(&sock, &frames).await;
    broker.wait_metric("tapbus_events_total", &[], 500.0);

    // NATS without JetStream: the stream cannot be made yet.
    let nats = tokio::task::spawn_blocking(move || Nats::start_on(port))
        .await
        .expect("start nats");
    let waiting_stream = format!("waiting for stream DNSTAP on nats://127.0.0.1:{port}");
    broker.wait_log("the stream waiting line", |l| l.contains(&waiting_stream));
    nats.terminate();

    // Now with JetStream: the stream is created and publishing starts.
    let store = tempfile::tempdir().expect("tempdir");
    let sd = store.path().to_path_buf();
    let nats = tokio::task::spawn_blocking(move || Nats::start_jetstream_on(port, &sd))
        .await
        .expect("start nats");
    broker.wait_log("the stream", |l| l.contains("JetStream stream ready"));
    send(&sock, &frames).await;
    broker.wait_metric("tapbus_events_total", &[], 1000.0);
    let (published, dropped) = broker.wait_settled("nats", 1000);
    assert!(
        published >= 500,
        "the events sent after the stream appeared: {published}"
    );
    let url = nats.url().to_string();
    let stored = tokio::task::spawn_blocking(move || {
        tapbus_testsupport::jetstream::stream_info_messages(&url, "DNSTAP")
    })
    .await
    .expect("stream info")
    .expect("stream DNSTAP");
    assert_eq!(stored, published as u64, "stream == published");
    assert_eq!(published + dropped, 1000);
    let log = broker.log_text();
    assert_eq!(
        count(&log, &waiting_nats),
        1,
        "one NATS waiting line\n{log}"
    );
    assert_eq!(
        count(&log, &waiting_stream),
        1,
        "one stream waiting line\n{log}"
    );
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(!log.contains("s3cr3t"), "credentials in the log\n{log}");
}
