//! `input::subscribe_waiting`: a consumer started before its bus, its stream or its Redis
//! server waits (one warning), and reads once they appear; an error that cannot pass (a
//! durable with another filter subject) is returned at once; the future can be dropped
//! while it waits.
//!
//! Each test runs on tokio's current-thread runtime with a thread-local log collector, so
//! the lines it checks are its own.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tapbus_bus::input::{InputError, subscribe_waiting};
use tapbus_bus::subscribe::SubscribeError;
use tapbus_config::{ConsumerInputConfig, ConsumerInputSpec};
use tapbus_testsupport::free_port;
use tapbus_testsupport::servers::{Nats, Redis};
use tokio::time::{Instant, timeout};

use crate::*;

/// Log lines written on this thread, kept for the test to read.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (bounded) until a line contains `needle`.
    async fn wait_for(&self, needle: &str) {
        let t0 = Instant::now();
        while self.count(needle) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no {needle:?} in the log:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects this thread's log lines (info and up, plus debug of tapbus) until dropped.
fn collect_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,async_nats=warn"))
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    (logs, tracing::subscriber::set_default(sub))
}

fn spec(url: &str) -> ConsumerInputSpec {
    ConsumerInputConfig::from_url(url)
        .validate("input", "it")
        .expect("valid input")
}

async fn create_stream(url: &str) {
    let c = async_nats::connect(url).await.expect("connect");
    jetstream::new(c)
        .create_stream(stream::Config {
            name: "EV".into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
}

async fn publish(url: &str, payload: &str) {
    let c = async_nats::connect(url).await.expect("connect publisher");
    jetstream::new(c)
        .publish("ev.x", payload.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("pub ack");
}

#[tokio::test]
async fn jetstream_input_started_before_the_server_reads_once_it_is_there() {
    let (logs, _guard) = collect_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let s = spec(&format!("jetstream://127.0.0.1:{port}/EV?durable=early"));
    let waiting = tokio::spawn(async move { subscribe_waiting("it", &s).await });
    let nats_line = format!("waiting for NATS at nats://127.0.0.1:{port}");
    logs.wait_for(&nats_line).await;
    assert!(!waiting.is_finished(), "returned without a server");

    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream_on(port, &sd)).await;
    // Connected, but no stream yet: it waits for that too.
    let stream_line = format!("waiting for stream EV on nats://127.0.0.1:{port}");
    logs.wait_for(&stream_line).await;
    create_stream(nats.url()).await;
    publish(nats.url(), "m0").await;
    let mut sub = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("subscribed within 15 s of the stream")
        .expect("task")
        .expect("subscribed");
    let got = take(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("m", 1));
    assert_eq!(logs.count(&nats_line), 1, "{}", logs.text());
    assert_eq!(logs.count(&stream_line), 1, "{}", logs.text());
    assert_eq!(
        logs.count("stream EV on nats://127.0.0.1"),
        2,
        "the waiting line and the line saying it is there\n{}",
        logs.text()
    );
}

#[tokio::test]
async fn jetstream_input_started_before_the_stream_reads_once_it_is_made() {
    let (logs, _guard) = collect_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    let s = spec(&format!(
        "jetstream://127.0.0.1:{}/EV?durable=w",
        nats.port()
    ));
    let waiting = tokio::spawn(async move { subscribe_waiting("it", &s).await });
    let line = format!("waiting for stream EV on nats://127.0.0.1:{}", nats.port());
    logs.wait_for(&line).await;
    assert!(!waiting.is_finished());
    create_stream(nats.url()).await;
    publish(nats.url(), "m0").await;
    let mut sub = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("subscribed within 15 s of the stream")
        .expect("task")
        .expect("subscribed");
    let got = take(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("m", 1));
    assert_eq!(logs.count(&line), 1, "{}", logs.text());
    assert_eq!(logs.count("waiting for NATS"), 0, "{}", logs.text());
}

#[tokio::test]
async fn a_durable_with_another_filter_is_returned_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    create_stream(nats.url()).await;
    let base = format!("jetstream://127.0.0.1:{}/EV?durable=d", nats.port());
    let first = subscribe_waiting("it", &spec(&format!("{base}&filter=ev.a")))
        .await
        .expect("durable made");
    drop(first);
    let t0 = Instant::now();
    let r = timeout(
        Duration::from_secs(10),
        subscribe_waiting("it", &spec(&format!("{base}&filter=ev.b"))),
    )
    .await
    .expect("returned, not waiting");
    let e = match r {
        Ok(_) => panic!("a durable with another filter subject was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(
            e,
            InputError::Subscribe(SubscribeError::JetStreamConsumerMismatch { .. })
        ),
        "{e}"
    );
    assert!(!e.retryable(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// A mode that does not fit the URL's bus is returned at once, not waited on.
#[tokio::test]
async fn a_mode_that_does_not_fit_the_bus_is_returned_at_once() {
    let mut s = spec(&format!("redis://127.0.0.1:{}?stream=ev", free_port()));
    s.mode = spec("nats://127.0.0.1:4222/ev.>").mode;
    let r = timeout(Duration::from_secs(5), subscribe_waiting("it", &s))
        .await
        .expect("returned at once");
    match r {
        Err(e @ InputError::Mismatch) => assert!(!e.retryable()),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("subscribed with a mode of another bus"),
    }
}

#[tokio::test]
async fn redis_stream_input_started_before_the_server_reads_once_it_is_there() {
    let (logs, _guard) = collect_logs();
    let port = free_port();
    let s = spec(&format!("redis://127.0.0.1:{port}?stream=ev&group=g"));
    let waiting = tokio::spawn(async move { subscribe_waiting("it", &s).await });
    let line = format!("waiting for the bus at redis://127.0.0.1:{port}");
    logs.wait_for(&line).await;
    assert!(!waiting.is_finished());
    let _redis = blocking(move || Redis::start_on(port)).await;
    let mut sub = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("subscribed within 15 s of the server")
        .expect("task")
        .expect("subscribed");
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: String = redis::cmd("XADD")
        .arg("ev")
        .arg("*")
        .arg("data")
        .arg("r0")
        .query_async(&mut con)
        .await
        .expect("XADD");
    let got = take(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(logs.count(&line), 1, "{}", logs.text());
}

/// Dropping the future while it waits (a consumer's SIGTERM) ends it at once.
#[tokio::test]
async fn the_wait_can_be_dropped() {
    let (logs, _guard) = collect_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    let s = spec(&format!(
        "jetstream://127.0.0.1:{}/EV?durable=gone",
        nats.port()
    ));
    let waiting = tokio::spawn(async move { subscribe_waiting("it", &s).await });
    logs.wait_for("waiting for stream EV").await;
    waiting.abort();
    let r = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("ended at once");
    assert!(r.is_err_and(|e| e.is_cancelled()));
    // Nothing was made on the server meanwhile: the stream, and so the durable, does not
    // exist.
    let c = async_nats::connect(nats.url()).await.expect("connect");
    assert!(jetstream::new(c).get_stream("EV").await.is_err());
}

/// NATS core: the subscription is made once the server is there, so what is published
/// after `subscribe_waiting` returned arrives.
#[tokio::test]
async fn nats_core_input_started_before_the_server_reads_once_it_is_there() {
    let (logs, _guard) = collect_logs();
    let port = free_port();
    let s = spec(&format!("nats://127.0.0.1:{port}/ev.>"));
    let waiting = tokio::spawn(async move { subscribe_waiting("it", &s).await });
    let line = format!("waiting for NATS at nats://127.0.0.1:{port}");
    logs.wait_for(&line).await;
    assert!(!waiting.is_finished(), "returned without a server");
    let nats = blocking(move || Nats::start_on(port)).await;
    let mut sub = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("subscribed within 15 s of the server")
        .expect("task")
        .expect("subscribed");
    let c = async_nats::connect(nats.url())
        .await
        .expect("connect publisher");
    c.publish("ev.x", "c0".into()).await.expect("publish");
    c.flush().await.expect("flush");
    let got = take(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("c", 1));
    assert_eq!(logs.count(&line), 1, "{}", logs.text());
}
