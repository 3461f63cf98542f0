//! tapbus-reduce against real servers: the broker replays every capture of the test data
//! into JetStream, reduce reads them through a durable consumer and publishes records to
//! NATS. The `qname` records sum, per qname, to the CLIENT_RESPONSE messages of the
//! captures as the independent decoder saw them (`X.expected.jsonl`, the golang dnstap
//! CLI), and to the broker's own stdout copy; every event is acked only after its records
//! were confirmed, and the durable is left empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom::{self, Scrape};
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, testdata, wait_until};

fn reduce_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-reduce"))
}

/// The broker replays `capture` into JetStream (stream DNSTAP); returns the events as
/// published.
fn replay_into_jetstream(nats_url: &str, capture: &str) -> Vec<Value> {
    let broker = tapbus_testsupport::sibling_bin(&reduce_bin(), "tapbus-broker", "tapbus-broker");
    tapbus_testsupport::jetstream::replay_capture(&broker, nats_url, capture)
        .iter()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

/// Equal maps, or a failure listing only the keys that differ.
fn assert_same(got: &BTreeMap<String, u64>, want: &BTreeMap<String, u64>, what: &str) {
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .take(40)
        .map(|k| format!("{k:?}: {:?} != {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diff.is_empty(), "{what}: {}", diff.join(", "));
}

/// This process's own counter `name` (`consumer="reduce"`) in the exposition.
fn own(text: &str, name: &str) -> Option<u64> {
    prom::value(&Scrape::parse(text), name, &[("consumer", "reduce")]).map(|v| v as u64)
}

#[test]
fn jetstream_to_records_sum_to_the_events_with_acks_after_publishing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let mut events = Vec::new();
    let mut independent: BTreeMap<String, u64> = BTreeMap::new();
    let captures = testdata::captures();
    assert!(captures.len() >= 8, "{captures:?}");
    for capture in &captures {
        let published = replay_into_jetstream(nats.url(), capture);
        assert_eq!(
            published.len(),
            testdata::expected_count(capture),
            "{capture}"
        );
        events.extend(published);
        for (q, n) in testdata::client_responses_per_qname(capture) {
            *independent.entry(q).or_insert(0) += n;
        }
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        if e["dnstap"]["operation"] == "CLIENT_RESPONSE" && e["dnstap"]["timestamp"].is_u64() {
            let q = e["dns"]["qname"]
                .as_str()
                .unwrap_or("")
                .to_ascii_lowercase();
            *want.entry(q).or_insert(0) += 1;
        }
    }
    assert!(want.len() > 10, "{want:?}");
    assert_same(
        &want,
        &independent,
        "the broker's events against the independent decoder",
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let mut records = rt
        .block_on(client.subscribe("tapbus.reduced.>"))
        .expect("subscribe");
    rt.block_on(client.flush()).expect("flush");
    // Read the records while they come (the bulk capture gives more of them than the
    // client's buffer holds).
    let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = collected.clone();
    rt.spawn(async move {
        while let Some(m) = records.next().await {
            if let Ok(mut v) = sink.lock() {
                v.push((m.subject.to_string(), m.payload.to_vec()));
            }
        }
    });

    let port = free_port();
    let input = format!(
        "{}/DNSTAP?durable=reduce",
        nats.url().replace("nats://", "jetstream://")
    );
    let mut reduce = Proc::spawn(
        Command::new(reduce_bin())
            .args([
                "--input",
                &input,
                "--output",
                nats.url(),
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("TAPBUS_IDLE_FLUSH", "1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{port}");
    let expected = events.len() as u64;
    wait_until("every event acked", Duration::from_secs(180), || {
        own(
            &http_get(&addr, "/metrics").unwrap_or_default(),
            "tapbus_consumer_acked_total",
        ) == Some(expected)
    });
    // The bus's own view of the durable, on /metrics: nothing left (polled every 5s).
    wait_until("lag 0 on /metrics", Duration::from_secs(20), || {
        let t = http_get(&addr, "/metrics").unwrap_or_default();
        own(&t, "tapbus_consumer_lag_messages") == Some(0)
            && own(&t, "tapbus_consumer_bus_unacked_messages") == Some(0)
    });
    let text = http_get(&addr, "/metrics").unwrap_or_default();
    assert_eq!(own(&text, "tapbus_consumer_pending"), Some(0), "{text}");
    assert_eq!(
        prom::value(&Scrape::parse(&text), "tapbus_reduce_events_total", &[]),
        Some(expected as f64),
        "{text}"
    );

    let info = rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("DNSTAP").await.expect("stream");
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("reduce").await.expect("consumer");
        c.info().await.expect("info").clone()
    });
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    assert!(reduce.terminate().success());

    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut client_total = 0;
    let count_now = || collected.lock().map(|v| v.len()).unwrap_or(0);
    let mut seen = count_now();
    loop {
        tapbus_testsupport::pause(Duration::from_millis(700));
        let n = count_now();
        if n == seen {
            break;
        }
        seen = n;
    }
    let records = std::mem::take(&mut *collected.lock().expect("records"));
    for (subject, payload) in records {
        let r: Value = serde_json::from_slice(&payload).expect("record json");
        assert!(
            ids.insert(r["id"].as_str().expect("id").to_string()),
            "id twice: {r}"
        );
        let count = r["count"].as_u64().expect("count");
        match subject.as_str() {
            "tapbus.reduced.qname" => {
                let q = r["key"]["qname"].as_str().unwrap_or("").to_string();
                *got.entry(q).or_insert(0) += count;
            }
            "tapbus.reduced.client" => client_total += count,
            s => panic!("unexpected subject {s}"),
        }
    }
    assert_same(
        &got,
        &independent,
        "records against the independent decoder",
    );
    assert_eq!(client_total, want.values().sum::<u64>());
}

/// tapbus-reduce on `durable`, publishing records into the JetStream stream REDUCED
/// (over `tapbus.reduced.>`, created by the first process), with `env` on top. Windows
/// of 1s with 1s lateness let a 5s `ack_wait` pass the start-up check, so what a killed
/// process held comes back within seconds.
fn reduce_into_jetstream(nats_url: &str, durable: &str, env: &[(&str, &str)]) -> Proc {
    let input = format!(
        "{}/DNSTAP?durable={durable}&ack_wait=5s",
        nats_url.replace("nats://", "jetstream://")
    );
    let mut cmd = Command::new(reduce_bin());
    cmd.args([
        "--input",
        &input,
        "--output",
        nats_url,
        "--metrics-listen",
        "",
    ])
    .env("TAPBUS_IDLE_FLUSH", "1s")
    .env("TAPBUS_REDUCE__WINDOW", "1s")
    .env("TAPBUS_REDUCE__LATENESS", "1s")
    .env("TAPBUS_OUTPUT__JETSTREAM", "true")
    .env("TAPBUS_OUTPUT__STREAM", "REDUCED")
    .env("TAPBUS_OUTPUT__STREAM_SUBJECTS", "[\"tapbus.reduced.>\"]")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(&mut cmd)
}

/// Sum of `count` per qname of the `qname` records, and the ids, of what REDUCED stores.
fn stored_qname_sums(nats_url: &str) -> (BTreeMap<String, u64>, usize) {
    let mut sums = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let msgs = tapbus_testsupport::jetstream::stream_messages(nats_url, "REDUCED");
    for (subject, payload) in &msgs {
        let r: Value = serde_json::from_slice(payload).expect("record json");
        ids.insert(r["id"].as_str().expect("id").to_string());
        if subject == "tapbus.reduced.qname" {
            let q = r["key"]["qname"].as_str().unwrap_or("").to_string();
            *sums.entry(q).or_insert(0) += r["count"].as_u64().expect("count");
        }
    }
    assert_eq!(ids.len(), msgs.len(), "REDUCED stores an id twice");
    (sums, msgs.len())
}

/// The same events reduced twice (a second durable reads the whole stream again, as a
/// restart that lost every ack would) give the same records under the same ids, and
/// JetStream keeps one copy of each: the stored records still sum to the capture.
#[test]
fn records_reduced_again_are_dropped_by_jetstream_by_their_id() {
    const CAPTURE: &str = "unbound.fstrm";
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    replay_into_jetstream(nats.url(), CAPTURE);
    let want = testdata::client_responses_per_qname(CAPTURE);
    for (i, durable) in ["first", "again"].into_iter().enumerate() {
        let mut reduce = reduce_into_jetstream(nats.url(), durable, &[]);
        wait_until(
            &format!("reduce #{i} acked every event"),
            Duration::from_secs(60),
            || tapbus_testsupport::jetstream::consumer_drained(nats.url(), "DNSTAP", durable),
        );
        assert!(reduce.terminate().success());
        let (sums, stored) = stored_qname_sums(nats.url());
        assert!(stored > want.len(), "{stored} records");
        assert_same(&sums, &want, &format!("after reduce #{i}"));
    }
}

/// A SIGKILLed reduce loses nothing: what it had not acked goes to its successor on the
/// same durable. What the successor reduces again either repeats a stored record exactly
/// (same id: JetStream drops it) or makes a record of its own (a window rebuilt from part
/// of its events, or a late record): those events are counted twice, never more than the
/// killed process held unacked when it died.
#[test]
fn sigkilled_reduce_loses_nothing_and_repeats_at_most_what_it_held() {
    const BULK: &str = "bulk-100k.fstrm";
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    replay_into_jetstream(nats.url(), BULK);
    let want = testdata::client_responses_per_qname(BULK);
    let env = [("TAPBUS_MAX_PENDING", "5000")];
    let mut a = reduce_into_jetstream(nats.url(), "reduce", &env);
    let js_msgs = |url: &str| {
        tapbus_testsupport::jetstream::stream_info_messages(url, "REDUCED").unwrap_or(0)
    };
    wait_until("A stored some records", Duration::from_secs(60), || {
        js_msgs(nats.url()) > 0
    });
    a.kill();
    let backlog = tapbus_testsupport::jetstream::consumer_backlog(nats.url(), "DNSTAP", "reduce")
        .expect("backlog");
    assert_ne!(backlog, (0, 0), "A was meant to die mid-stream");
    let held = backlog.1;
    let mut b = reduce_into_jetstream(nats.url(), "reduce", &env);
    wait_until(
        "B took the rest and acked it",
        Duration::from_secs(180),
        || tapbus_testsupport::jetstream::consumer_drained(nats.url(), "DNSTAP", "reduce"),
    );
    assert!(b.terminate().success());
    let (got, _) = stored_qname_sums(nats.url());
    let lost: Vec<String> = want
        .iter()
        .filter(|(q, n)| got.get(*q).copied().unwrap_or(0) < **n)
        .take(20)
        .map(|(q, n)| format!("{q}: {:?} < {n}", got.get(q)))
        .collect();
    assert!(lost.is_empty(), "lost: {}", lost.join(", "));
    let (g, w): (u64, u64) = (got.values().sum(), want.values().sum());
    assert!(
        g <= w + held,
        "counted twice more than A held unacked ({held}): {g} vs {w}"
    );
    assert!(
        got.keys().all(|q| want.contains_key(q)),
        "a qname the capture does not have"
    );
}
