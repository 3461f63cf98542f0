//! tapbus-aggregate against real servers: the broker replays a capture into JetStream,
//! aggregate reads it through a durable consumer and publishes batches to NATS; its
//! /metrics then count exactly the capture's messages per operation (the summary's
//! independent count), every event was acked only after a confirmed batch, and the last
//! batch on `tapbus.metrics.<instance>` says the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom::{self, Scrape};
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, testdata, wait_until};

const CAPTURE: &str = "unbound.fstrm";

fn aggregate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-aggregate"))
}

fn broker_bin() -> PathBuf {
    tapbus_testsupport::sibling_bin(&aggregate_bin(), "tapbus-broker", "tapbus-broker")
}

/// The broker replays the capture into JetStream (stream DNSTAP) and exits.
fn replay_into_jetstream(nats_url: &str) {
    tapbus_testsupport::jetstream::replay_capture(&broker_bin(), nats_url, CAPTURE);
}

/// This process's own counter `name` (`consumer="aggregate"`) in the exposition.
fn own(text: &str, name: &str) -> Option<u64> {
    prom::value(&Scrape::parse(text), name, &[("consumer", "aggregate")]).map(|v| v as u64)
}

/// `sum by (operation) (dnstap_messages_total)` from the exposition text.
fn by_operation_text(text: &str) -> BTreeMap<String, u64> {
    prom::sum_by(
        &Scrape::parse(text),
        "dnstap_messages_total",
        &[],
        "operation",
    )
    .into_iter()
    .map(|(op, v)| (op, v as u64))
    .collect()
}

/// The same from a batch.
fn by_operation_batch(batch: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in batch["series"].as_array().expect("series") {
        if s["name"] == "dnstap_messages_total" {
            let op = s["labels"]["operation"].as_str().expect("operation");
            *out.entry(op.to_string()).or_insert(0) += s["value"].as_f64().expect("value") as u64;
        }
    }
    out
}

fn summary_per_type() -> BTreeMap<String, u64> {
    let p = testdata::path(&format!("{CAPTURE}.summary.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(p).expect("summary")).expect("json");
    v["counts"]["per_type"]
        .as_object()
        .expect("per_type")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().expect("count")))
        .collect()
}

#[test]
fn jetstream_to_metrics_and_batches_exactly_with_acks_after_each_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    replay_into_jetstream(nats.url());
    let expected = testdata::expected_count(CAPTURE) as u64;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let mut batches = rt
        .block_on(client.subscribe("tapbus.metrics.>"))
        .expect("subscribe");
    rt.block_on(client.flush()).expect("flush");

    let port = free_port();
    let input = format!(
        "{}/DNSTAP?durable=agg",
        nats.url().replace("nats://", "jetstream://")
    );
    let mut agg = Proc::spawn(
        Command::new(aggregate_bin())
            .args([
                "--input",
                &input,
                "--output",
                nats.url(),
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
                "--instance",
                "it1",
            ])
            .env("TAPBUS_AGGREGATE__INTERVAL", "1s")
            .env("TAPBUS_MAX_PENDING", "500")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{port}");
    let metrics = || http_get(&addr, "/metrics").unwrap_or_default();
    wait_until(
        "every event counted and acked",
        Duration::from_secs(60),
        || {
            let t = metrics();
            own(&t, "tapbus_consumer_acked_total") == Some(expected)
        },
    );
    let text = metrics();
    assert_eq!(by_operation_text(&text), summary_per_type());
    assert_eq!(own(&text, "tapbus_consumer_messages_total"), Some(expected));
    assert_eq!(own(&text, "tapbus_consumer_bad_total"), Some(0));
    assert_eq!(own(&text, "tapbus_consumer_pending"), Some(0));
    // Acks went out with batches: more than one (max_pending 500 < the capture).
    assert!(
        own(&text, "tapbus_consumer_batches_total").is_some_and(|n| n >= 4),
        "{text}"
    );
    assert!(http_get(&addr, "/health").is_some_and(|b| b.contains("ok")));

    // The durable holds nothing unacked.
    let info = rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("DNSTAP").await.expect("stream");
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("agg").await.expect("consumer");
        c.info().await.expect("info").clone()
    });
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));

    // SIGTERM: a last batch, then exit 0.
    let st = agg.terminate();
    assert!(st.success(), "aggregate exit: {st}");
    let mut last = None;
    rt.block_on(async {
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), batches.next()).await
        {
            assert_eq!(m.subject.as_str(), "tapbus.metrics.it1");
            last = Some(m.payload);
        }
    });
    let last: Value = serde_json::from_slice(&last.expect("a batch")).expect("batch json");
    assert_eq!(last["instance"], "it1");
    assert_eq!(by_operation_batch(&last), summary_per_type());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let out = Command::new(aggregate_bin())
        .args([
            "--input",
            "nats://127.0.0.1:1",
            "--metrics-listen",
            "nowhere",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics_listen"), "{err}");
    let out = Command::new(aggregate_bin())
        .args(["--input", "nats://127.0.0.1:1", "--instance", "a.b"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aggregate"));
    let out = Command::new(aggregate_bin()).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("input.url"));
}

/// The last batch of each instance seen on `tapbus.metrics.>`: instance -> (seq, counts
/// by operation).
type Last = BTreeMap<String, (u64, BTreeMap<String, u64>)>;

/// A SIGKILLed aggregate loses nothing: what it had not acked (never more than
/// `max_pending` past its last confirmed batch) is delivered to its successor, so the last
/// batches of the two instances together count every event, at most `max_pending` twice.
#[test]
fn sigkilled_aggregate_loses_nothing_and_double_counts_at_most_max_pending() {
    const BULK: &str = "bulk-100k.fstrm";
    const MAX_PENDING: u64 = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let file = testdata::path(BULK);
    let st = Command::new(broker_bin())
        .env(
            "TAPBUS_INPUTS__FILE__URL",
            format!("file://{}", file.display()),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_OUTPUTS__BUS__URL", nats.url())
        .env("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("broker");
    assert!(st.success());
    let expected = testdata::expected_count(BULK) as u64;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let mut batches = rt
        .block_on(client.subscribe("tapbus.metrics.>"))
        .expect("subscribe");
    rt.block_on(client.flush()).expect("flush");
    let last = std::sync::Arc::new(std::sync::Mutex::new(Last::new()));
    {
        let last = last.clone();
        rt.spawn(async move {
            while let Some(m) = batches.next().await {
                let b: Value = match serde_json::from_slice(&m.payload) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                let inst = b["instance"].as_str().unwrap_or("").to_string();
                let seq = b["seq"].as_u64().unwrap_or(0);
                if let Ok(mut l) = last.lock() {
                    let e = l.entry(inst).or_insert((0, BTreeMap::new()));
                    if seq >= e.0 {
                        *e = (seq, by_operation_batch(&b));
                    }
                }
            }
        });
    }
    let input = format!(
        "{}/DNSTAP?durable=agg&ack_wait=2s",
        nats.url().replace("nats://", "jetstream://")
    );
    let start = |instance: &str| {
        Proc::spawn(
            Command::new(aggregate_bin())
                .args([
                    "--input",
                    &input,
                    "--output",
                    nats.url(),
                    "--metrics-listen",
                    "",
                    "--instance",
                    instance,
                ])
                .env("TAPBUS_AGGREGATE__INTERVAL", "1s")
                .env("TAPBUS_MAX_PENDING", MAX_PENDING.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let total = |l: &Last, inst: &str| l.get(inst).map_or(0, |(_, c)| c.values().sum::<u64>());
    let mut a = start("a");
    wait_until("A counted some", Duration::from_secs(30), || {
        last.lock().is_ok_and(|l| total(&l, "a") > 0)
    });
    a.kill();
    let a_total = last.lock().map(|l| total(&l, "a")).unwrap_or(0);
    assert!(
        a_total < expected,
        "A was meant to die mid-stream ({a_total})"
    );
    let mut b = start("b");
    let durable_empty = || {
        rt.block_on(async {
            let js = async_nats::jetstream::new(client.clone());
            let stream = js.get_stream("DNSTAP").await.ok()?;
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("agg").await.ok()?;
            let i = c.info().await.ok()?;
            Some(i.num_pending == 0 && i.num_ack_pending == 0)
        }) == Some(true)
    };
    wait_until(
        "B took the rest and acked it",
        Duration::from_secs(120),
        durable_empty,
    );
    assert!(b.terminate().success());
    std::thread::sleep(Duration::from_millis(500));
    let l = last.lock().expect("last").clone();
    let (a_total, b_total) = (total(&l, "a"), total(&l, "b"));
    assert!(
        a_total + b_total >= expected,
        "lost: {a_total} + {b_total} < {expected}"
    );
    assert!(
        a_total + b_total <= expected + MAX_PENDING,
        "counted twice more than max_pending: {a_total} + {b_total} vs {expected}"
    );
}
