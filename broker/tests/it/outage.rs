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
    let mut broker = Broker::start_unix(&sock, None, nats.url());
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);

    // Bus down: dnstap is still read completely (the sender finishes its handshake).
    drop(nats);
    let file = capture("kresd.fstrm");
    let n = expected_count("kresd.fstrm") as f64;
    replay_unix(&file, &sock).await;
    broker.wait_metric("tapbus_events_total", &[], n);
    assert!(broker.is_running());

    // Bus back on the same port: the client reconnects and publishing resumes.
    let nats = Nats::start_on(port);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    replay_unix(&file, &sock).await;
    let got = sub.collect(n as usize, Duration::from_secs(15)).await;
    assert_eq!(got.len() as f64, n, "all events after the reconnect arrive");
    let log = broker.log_text();
    assert!(log.contains("NATS disconnected"), "{log}");
    assert!(log.matches("NATS connected").count() >= 2, "{log}");
    // Everything read was either published (to the old or the new server) or counted,
    // each event exactly once: published + dropped == the 2n events read, nothing in flight.
    let total = 2 * n as usize;
    let (published, dropped) = broker.wait_settled("nats", total);
    assert_eq!(
        published + dropped,
        total,
        "published {published} + dropped {dropped}"
    );
    assert!(
        published >= n as usize,
        "the {n} events after the restart were published"
    );
}

/// Stopping the broker while its bus is down ends within the drain deadline, and every
/// event is accounted for: `published + dropped == events` in the closing summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_bus_is_down_counts_everything() {
    for (what, extra) in [("core", ""), ("jetstream", "jetstream = true\n")] {
        let store = tempfile::tempdir().expect("tempdir");
        let nats = Nats::start_jetstream(store.path());
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dnstap.sock");
        let cfg = write_broker_config(
            dir.path(),
            &sock,
            "nats",
            &format!("url = \"{}\"\n{extra}", nats.url()),
        );
        let mut broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
        broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
        if what == "jetstream" {
            wait_until_async("stream ready", Duration::from_secs(15), || {
                broker.log_text().contains("JetStream stream ready")
            })
            .await;
        }
        drop(nats);
        let name = "kresd.fstrm";
        let n = expected_count(name);
        replay_unix(&capture(name), &sock).await;
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
