//! NATS goes away and comes back: the broker keeps reading dnstap, counts what it could
//! not publish, reconnects by itself and publishes again, and says so in its log.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_is_survived() {
    let nats = Nats::start();
    let port = nats.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let mut broker = Broker::start(&["-i", &format!("unix://{}", sock.display()), "-o", &nats.url]);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);

    // Bus down: dnstap is still read completely (the sender finishes its handshake).
    drop(nats);
    let file = capture("kresd.fstrm");
    let n = expected_count("kresd.fstrm") as f64;
    let f = file.clone();
    let s = sock.clone();
    tokio::task::spawn_blocking(move || fstrm_replay_unix(&f, &s))
        .await
        .expect("replay while NATS is down");
    broker.wait_metric("tapbus_events_total", &[], n);
    assert!(broker.is_running());

    // Bus back on the same port: the client reconnects and publishing resumes.
    let nats = Nats::start_on(port);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    let mut sub = Sub::start(&nats.url, "dnstap.>").await;
    let f = file.clone();
    let s = sock.clone();
    tokio::task::spawn_blocking(move || fstrm_replay_unix(&f, &s))
        .await
        .expect("replay after restart");
    let got = sub.collect(n as usize, Duration::from_secs(15)).await;
    assert_eq!(got.len() as f64, n, "all events after the reconnect arrive");
    let log = broker.log_text();
    assert!(log.contains("NATS disconnected"), "{log}");
    assert!(log.matches("NATS connected").count() >= 2, "{log}");
    // Everything read was either published (to the old or the new server) or counted.
    let published = broker.metric("tapbus_published_total", &[]);
    let dropped = broker.metric("tapbus_dropped_total", &[]);
    assert!(
        published + dropped >= 2.0 * n,
        "published {published} + dropped {dropped}"
    );
}
