//! The Redis output against a real redis-server: pub/sub channels, a capped list (RPUSH +
//! LTRIM, read the Logstash way from the left) and a capped stream read by a consumer group.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use redis::streams::{StreamRangeReply, StreamReadReply};

use crate::harness::*;

/// A plain connection for assertions; no response timeout (blocking reads are used).
async fn con(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(None);
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .expect("connect to redis")
}

fn parse(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "event is not JSON ({e}): {}",
            String::from_utf8_lossy(payload)
        )
    })
}

/// Checks the events against the reference, in order.
fn assert_events(what: &str, got: &[serde_json::Value], want: &[serde_json::Value]) {
    let schema = validator();
    assert_eq!(got.len(), want.len(), "{what}: number of events");
    for (i, (ev, want)) in got.iter().zip(want).enumerate() {
        assert_valid(&schema, ev);
        assert_eq!(key(ev), key(want), "{what}: event {i} differs");
    }
}

async fn replay(file: PathBuf, sock: PathBuf) {
    replay_unix(&file, &sock).await
}

fn unix_input(dir: &Path) -> (PathBuf, String) {
    let sock = dir.join("dnstap.sock");
    let url = format!("unix://{}", sock.display());
    (sock, url)
}

/// Starts the broker with a unix input and one `[outputs.redis]` table from `output`.
fn broker_with(dir: &Path, output: &str) -> (Broker, PathBuf) {
    let (sock, input) = unix_input(dir);
    let conf = dir.join("broker.toml");
    std::fs::write(&conf, format!("[outputs.redis]\n{output}")).expect("write config");
    let b = Broker::start(&["-c", conf.to_str().expect("utf8"), "-i", &input]);
    (b, sock)
}

/// `LRANGE key 0 -1`.
pub(crate) async fn lrange(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<Vec<u8>> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(con)
        .await
        .expect("LRANGE")
}

/// A length query (`LLEN key`, `XLEN key`).
async fn length(con: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> usize {
    redis::cmd(cmd)
        .arg(key)
        .query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{cmd} {key}: {e}"))
}

/// Starts a broker whose Redis output is `output`, replays `file` and waits until it has
/// published `n` events.
async fn deliver(dir: &Path, output: &str, file: &Path, n: usize) -> Broker {
    let (broker, sock) = broker_with(dir, output);
    replay(file.to_path_buf(), sock).await;
    broker.wait_metric("tapbus_published_total", &["output=\"redis\""], n as f64);
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_mode_delivers_every_event_on_its_channel() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sock, input) = unix_input(dir.path());
    let broker = Broker::start(&["-i", &input, "-o", &redis.url()]);

    let mut pubsub = redis::Client::open(redis.url())
        .expect("client")
        .get_async_pubsub()
        .await
        .expect("pubsub connect");
    pubsub.psubscribe("dnstap.*").await.expect("psubscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut s = pubsub.into_on_message();
        while let Some(m) = s.next().await {
            let item = (
                m.get_channel_name().to_string(),
                m.get_payload_bytes().to_vec(),
            );
            if tx.send(item).is_err() {
                break;
            }
        }
    });

    let file = capture("kresd.fstrm");
    let reference = reference_events(&file);
    assert_eq!(reference.len(), expected_count("kresd.fstrm"));
    replay(file, sock).await;

    let mut got = Vec::new();
    while got.len() < reference.len() {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((ch, payload))) => got.push((ch, parse(&payload))),
            _ => break,
        }
    }
    let events: Vec<_> = got.iter().map(|(_, ev)| ev.clone()).collect();
    assert_events("pub/sub", &events, &reference);
    for (i, (ch, ev)) in got.iter().enumerate() {
        assert_eq!(ch, &expected_subject(ev), "channel of message {i}");
    }
    // Nothing more than was sent.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    reader.abort();

    let n = reference.len() as f64;
    broker.wait_metric("tapbus_published_total", &["output=\"redis\""], n);
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    assert_eq!(
        broker.metric("tapbus_output_up", &["output=\"redis\""]),
        1.0
    );
    let log = broker.log_text();
    assert!(!log.contains("WARN"), "no warnings expected:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_mode_rpushes_in_order_and_caps_the_length() {
    let redis = Redis::start();
    let mut con = con(&redis).await;
    let file = capture("kresd.fstrm");
    let reference = reference_events(&file);
    let n = reference.len();

    // A cap above the event count keeps everything.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = deliver(
        dir.path(),
        &format!(
            "url = \"{}\"\nmode = \"list\"\nkey = \"dnstap\"\nmax_len = {}\n",
            redis.url(),
            n + 1000
        ),
        &file,
        n,
    )
    .await;
    assert_eq!(length(&mut con, "LLEN", "dnstap").await, n, "LLEN");
    let items = lrange(&mut con, "dnstap").await;
    let events: Vec<_> = items.iter().map(|b| parse(b)).collect();
    assert_events("list", &events, &reference);
    // The head of the list is the oldest event: what a Logstash-style LPOP consumer reads.
    let first: Vec<u8> = redis::cmd("LPOP")
        .arg("dnstap")
        .query_async(&mut con)
        .await
        .expect("LPOP");
    assert_eq!(key(&parse(&first)), key(&reference[0]));
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    drop(broker);

    // A small cap keeps exactly the newest events.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = deliver(
        dir.path(),
        &format!(
            "url = \"{}\"\nmode = \"list\"\nkey = \"small\"\nmax_len = 100\n",
            redis.url()
        ),
        &file,
        n,
    )
    .await;
    let items = lrange(&mut con, "small").await;
    let events: Vec<_> = items.iter().map(|b| parse(b)).collect();
    assert_events("capped list", &events, &reference[n - 100..]);
    let log = broker.log_text();
    assert!(!log.contains("WARN"), "no warnings expected:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mode_xadds_events_a_consumer_group_can_read() {
    let redis = Redis::start();
    let mut con = con(&redis).await;
    let file = capture("kresd.fstrm");
    let reference = reference_events(&file);
    let n = reference.len();

    let dir = tempfile::tempdir().expect("tempdir");
    let broker = deliver(
        dir.path(),
        &format!(
            "url = \"{}\"\nmode = \"stream\"\nkey = \"dnstap\"\nmax_len = 100000\n",
            redis.url()
        ),
        &file,
        n,
    )
    .await;
    assert_eq!(length(&mut con, "XLEN", "dnstap").await, n, "XLEN");
    let range: StreamRangeReply = redis::cmd("XRANGE")
        .arg("dnstap")
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("XRANGE");
    let data = |id: &redis::streams::StreamId| -> serde_json::Value {
        assert_eq!(id.map.len(), 1, "one field per entry: {:?}", id.map.keys());
        let b: Vec<u8> = id.get("data").expect("field data");
        parse(&b)
    };
    let events: Vec<_> = range.ids.iter().map(data).collect();
    assert_events("XRANGE", &events, &reference);

    // A consumer group created at the start of the stream reads everything, then acks.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "dnstap", "g", "0"])
        .query_async(&mut con)
        .await
        .expect("XGROUP CREATE");
    let mut read = Vec::new();
    let mut ids = Vec::new();
    while read.len() < n {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg(&["GROUP", "g", "c1", "COUNT", "500", "BLOCK", "2000"])
            .arg(&["STREAMS", "dnstap", ">"]);
        let fut = cmd.query_async::<Option<StreamReadReply>>(&mut con);
        let reply = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("XREADGROUP within 10s")
            .expect("XREADGROUP");
        let Some(reply) = reply else { break };
        let before = read.len();
        for k in &reply.keys {
            for id in &k.ids {
                read.push(data(id));
                ids.push(id.id.clone());
            }
        }
        if read.len() == before {
            break;
        }
    }
    assert_events("XREADGROUP", &read, &reference);
    let acked: usize = redis::cmd("XACK")
        .arg("dnstap")
        .arg("g")
        .arg(&ids)
        .query_async(&mut con)
        .await
        .expect("XACK");
    assert_eq!(acked, n);
    let pending: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&["dnstap", "g"])
        .query_async(&mut con)
        .await
        .expect("XPENDING");
    assert_eq!(pending.0, 0, "nothing pending after XACK");
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    let log = broker.log_text();
    assert!(!log.contains("WARN"), "no warnings expected:\n{log}");
}

/// Redis down at start: the output reports down and keeps what fits its bound; once Redis
/// is up, it delivers what it kept and events flow again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_counted_and_recovers() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_with(
        dir.path(),
        &format!("url = \"redis://127.0.0.1:{port}\"\nmode = \"list\"\nkey = \"dnstap\"\n"),
    );
    let file = capture("kresd.fstrm");
    let n = expected_count("kresd.fstrm");
    replay(file.clone(), sock.clone()).await;
    broker.wait_metric("tapbus_events_total", &[], n as f64);
    // Redis is down: nothing is published, the output says so, and the events are kept
    // (one batch held for a re-send, the rest in the queue: all fit its bound).
    wait_until_async("output down", Duration::from_secs(15), || {
        broker.log_text().contains("Redis down")
    })
    .await;
    assert_eq!(
        broker.metric("tapbus_output_up", &["output=\"redis\""]),
        0.0
    );
    assert_eq!(broker.metric("tapbus_published_total", &[]), 0.0);
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    let held = broker.metric("tapbus_inflight", &["output=\"redis\""])
        + broker.metric("tapbus_queue_depth", &["output=\"redis\""]);
    assert_eq!(held, n as f64, "every event is kept while Redis is down");

    // Redis comes up: what was kept is delivered, then new events flow.
    let redis = Redis::start_on(port);
    wait_until_async("output up", Duration::from_secs(15), || {
        broker.metric("tapbus_output_up", &["output=\"redis\""]) == 1.0
    })
    .await;
    broker.wait_metric("tapbus_published_total", &["output=\"redis\""], n as f64);
    replay(file, sock).await;
    broker.wait_metric(
        "tapbus_published_total",
        &["output=\"redis\""],
        2.0 * n as f64,
    );
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    let mut con = con(&redis).await;
    let len = length(&mut con, "LLEN", "dnstap").await;
    assert_eq!(len, 2 * n, "kept events and new ones, each once");
    assert!(
        broker.log_text().contains("Redis back"),
        "{}",
        broker.log_text()
    );
}

/// Redis refuses the commands (the list key holds a string: WRONGTYPE): the batches are
/// counted as dropped (`publish_error`) instead of being retried forever, the output stays
/// up, and events flow again once the key is usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_are_counted_not_retried() {
    let redis = Redis::start();
    let mut con = con(&redis).await;
    let _: () = redis::cmd("SET")
        .arg("dnstap")
        .arg("not a list")
        .query_async(&mut con)
        .await
        .expect("SET");
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_with(
        dir.path(),
        &format!(
            "url = \"{}\"\nmode = \"list\"\nkey = \"dnstap\"\n",
            redis.url()
        ),
    );
    let name = "kresd.fstrm";
    let file = capture(name);
    let n = expected_count(name);
    replay(file.clone(), sock.clone()).await;
    let (published, dropped) = broker.wait_settled("redis", n);
    assert_eq!((published, dropped), (0, n));
    assert_eq!(
        broker.metric(
            "tapbus_dropped_total",
            &["output=\"redis\"", "reason=\"publish_error\""]
        ),
        n as f64
    );
    assert_eq!(
        broker.metric("tapbus_output_up", &["output=\"redis\""]),
        1.0
    );
    assert!(
        broker.log_text().contains("Redis refused a batch"),
        "{}",
        broker.log_text()
    );
    let _: () = redis::cmd("DEL")
        .arg("dnstap")
        .query_async(&mut con)
        .await
        .expect("DEL");
    replay(file, sock).await;
    let (published, _) = broker.wait_settled("redis", 2 * n);
    assert_eq!(published, n);
    let len = length(&mut con, "LLEN", "dnstap").await;
    assert_eq!(len, n);
}
