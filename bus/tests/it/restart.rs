//! A consumer's JetStream input (pull consumer, through `tapbus_bus::input::subscribe`)
//! while nats-server crashes (SIGKILL) and comes back on the same port and store: it gets
//! messages again soon after the server is ready.
//!
//! Prints `RECOVERY jetstream input: …` (run with `-- --nocapture`); asserts a generous
//! bound only. The server is down for 1 s, or `RESTART_OUTAGE_MS`.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tapbus_config::ConsumerInputConfig;
use tapbus_testsupport::servers::Nats;
use tokio::time::{Instant, timeout};

use crate::*;

/// The bound asserted on the time from server ready to the first delivery.
const BOUND: Duration = Duration::from_secs(5);

/// Publishes `payload` to `ev.x` through a client of its own, retrying (bounded) until the
/// stream acknowledges it: just after a restart JetStream may still be loading.
async fn publish_acked(url: &str, payload: &str) {
    let t0 = Instant::now();
    for _ in 0..200 {
        if let Ok(c) = async_nats::connect(url).await {
            let js = jetstream::new(c);
            if let Ok(ack) = js.publish("ev.x", payload.to_string().into()).await
                && ack.await.is_ok()
            {
                return;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "publish to {url}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("publish to {url}: no ack after 200 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_input_receives_again_soon_after_a_server_crash() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    let port = nats.port();
    let url = nats.url().to_string();
    let c = async_nats::connect(&url).await.expect("connect");
    jetstream::new(c)
        .create_stream(stream::Config {
            name: "EV".into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let spec =
        ConsumerInputConfig::from_url(&format!("jetstream://127.0.0.1:{port}/EV?durable=restart"))
            .validate("input", "it")
            .expect("valid input");
    let mut sub = tapbus_bus::input::subscribe("it", &spec)
        .await
        .expect("subscribe");
    publish_acked(&url, "before").await;
    let got = take(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(&got[0].payload[..], b"before");
    for d in got {
        d.ack().await.expect("ack");
    }

    nats.kill();
    // 1 s down; `RESTART_OUTAGE_MS` sets another length (to measure long outages).
    let outage = std::env::var("RESTART_OUTAGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    tokio::time::sleep(outage).await;
    let sd = dir.path().to_path_buf();
    let _nats = blocking(move || Nats::start_jetstream_on(port, &sd)).await;
    let ready = Instant::now();
    publish_acked(&url, "after").await;
    let stored = ready.elapsed();
    let d = timeout(BOUND * 2, sub.next())
        .await
        .expect("a delivery after the restart")
        .expect("subscriber");
    let took = ready.elapsed();
    eprintln!(
        "RECOVERY jetstream input: stored {} ms, delivered {} ms after the server was ready",
        stored.as_millis(),
        took.as_millis()
    );
    assert_eq!(&d.payload[..], b"after");
    assert!(
        took < BOUND,
        "delivered only {took:?} after the server was ready"
    );
    d.ack().await.expect("ack");
}
