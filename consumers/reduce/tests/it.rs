//! tapbus-reduce against real servers: the broker replays a capture into JetStream, reduce
//! reads it through a durable consumer and publishes records to NATS. The `qname` records
//! sum, per qname, to the CLIENT_RESPONSE events of the capture (counted here with
//! serde_json from the broker's own stdout copy, not with the reducer), every event is
//! acked only after its records were confirmed, and the durable is left empty.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::Value;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, testdata, wait_until};

const CAPTURE: &str = "unbound.fstrm";

fn reduce_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-reduce"))
}

/// The broker replays the capture into JetStream (stream DNSTAP) and to its stdout;
/// returns the stdout copy (the events as published).
fn replay_into_jetstream(nats_url: &str) -> Vec<Value> {
    let broker = tapbus_testsupport::sibling_bin(&reduce_bin(), "tapbus-broker", "tapbus-broker");
    let file = testdata::path(CAPTURE);
    let mut child = Command::new(broker)
        .env(
            "TAPBUS_INPUTS__FILE__URL",
            format!("file://{}", file.display()),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_OUTPUTS__BUS__URL", nats_url)
        .env("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")
        .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("broker");
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read");
    assert!(child.wait().expect("wait").success());
    text.lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

fn own(text: &str, name: &str) -> Option<u64> {
    let prefix = format!("{name}{{consumer=\"reduce\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn jetstream_to_records_sum_to_the_events_with_acks_after_publishing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let events = replay_into_jetstream(nats.url());
    assert_eq!(events.len(), testdata::expected_count(CAPTURE));
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

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let mut records = rt
        .block_on(client.subscribe("tapbus.reduced.>"))
        .expect("subscribe");
    rt.block_on(client.flush()).expect("flush");

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
    wait_until("every event acked", Duration::from_secs(60), || {
        own(
            &http_get(&addr, "/metrics").unwrap_or_default(),
            "tapbus_consumer_acked_total",
        ) == Some(expected)
    });
    let text = http_get(&addr, "/metrics").unwrap_or_default();
    assert_eq!(own(&text, "tapbus_consumer_pending"), Some(0), "{text}");
    assert!(
        text.contains(&format!("tapbus_reduce_events_total {expected}")),
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
    rt.block_on(async {
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), records.next()).await
        {
            let r: Value = serde_json::from_slice(&m.payload).expect("record json");
            assert!(
                ids.insert(r["id"].as_str().expect("id").to_string()),
                "id twice: {r}"
            );
            let count = r["count"].as_u64().expect("count");
            match m.subject.as_str() {
                "tapbus.reduced.qname" => {
                    let q = r["key"]["qname"].as_str().unwrap_or("").to_string();
                    *got.entry(q).or_insert(0) += count;
                }
                "tapbus.reduced.client" => client_total += count,
                s => panic!("unexpected subject {s}"),
            }
        }
    });
    assert_eq!(got, want);
    assert_eq!(client_total, want.values().sum::<u64>());
}
