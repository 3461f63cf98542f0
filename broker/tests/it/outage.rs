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

/// Stopping the broker while its bus is down ends within the drain deadline, and every
/// event is accounted for: `published + dropped == events` in the closing summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_bus_is_down_counts_everything() {
    for (what, extra) in [("core", ""), ("jetstream", "jetstream = true\n")] {
        let store = tempfile::tempdir().expect("tempdir");
        let nats = Nats::start_with(&["-js", "-sd", store.path().to_str().expect("utf-8")]);
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dnstap.sock");
        let cfg = write_broker_config(
            dir.path(),
            &sock,
            "nats",
            &format!("url = \"{}\"\n{extra}", nats.url),
        );
        let mut broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
        broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
        if what == "jetstream" {
            wait_until("stream ready", Duration::from_secs(15), || {
                broker.log_text().contains("JetStream stream ready")
            });
        }
        drop(nats);
        let name = "kresd.fstrm";
        let n = expected_count(name);
        let file = capture(name);
        let s = sock.clone();
        tokio::task::spawn_blocking(move || fstrm_replay_unix(&file, &s))
            .await
            .expect("replay while NATS is down");
        broker.wait_metric("tapbus_events_total", &[], n as f64);
        let t0 = std::time::Instant::now();
        let st = broker.proc.terminate_within(Duration::from_secs(40));
        let log = broker.log_text();
        let st =
            st.unwrap_or_else(|| panic!("{what}: broker still running 40 s after SIGTERM\n{log}"));
        assert!(st.success(), "{what}: exit status {st}\n{log}");
        assert!(
            t0.elapsed() < Duration::from_secs(35),
            "{what}: took {:?}",
            t0.elapsed()
        );
        let line = log
            .lines()
            .find(|l| l.contains("output closed"))
            .unwrap_or_else(|| panic!("{what}: no closing summary\n{log}"));
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no {k} in {line}"))
        };
        assert_eq!(field("events"), n as u64, "{what}: {line}");
        assert_eq!(
            field("published") + field("dropped"),
            n as u64,
            "{what}: {line}"
        );
        assert_eq!(field("published"), 0, "{what}: {line}");
    }
}
