//! The launchers against the real servers: each starts on a free loopback port, answers,
//! and is gone after drop; the NATS cluster forms, replicates a JetStream stream over
//! three nodes and keeps accepting publishes after a node is killed.

use std::time::Duration;

use futures::StreamExt;
use tapbus_testsupport::servers::{Mosquitto, Nats, NatsCluster, Redis};
use tapbus_testsupport::{port_open, wait_until};

fn gone(pid: u32) -> bool {
    // A reaped child has no /proc entry (or it is someone else's by now: not ours).
    !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
}

#[test]
fn nats_starts_restarts_on_its_port_and_stops_on_drop() {
    let nats = Nats::start();
    let port = nats.port();
    assert_ne!(port, 4222);
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let pid = nats.pid();
    nats.terminate();
    assert!(gone(pid));
    assert!(!port_open(port), "nothing listens after terminate");
    let again = Nats::start_on(port);
    assert_eq!(again.port(), port);
    let pid = again.pid();
    drop(again);
    assert!(gone(pid), "drop ends the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_keeps_its_store_across_a_restart() {
    let store = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(store.path());
    let port = nats.port();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish("t.a", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    drop(js);
    nats.terminate();
    let nats = Nats::start_jetstream_on(port, store.path());
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut s = js.get_stream("T").await.expect("stream survives");
    assert_eq!(s.info().await.expect("info").state.messages, 1);
}

#[test]
fn mosquitto_starts_restarts_and_logs() {
    let mut mq = Mosquitto::start();
    let port = mq.port();
    assert_ne!(port, 1883);
    assert_eq!(mq.url(), format!("mqtt://127.0.0.1:{port}"));
    let pid = mq.pid();
    mq.restart();
    assert_ne!(mq.pid(), pid, "a new process");
    assert!(gone(pid));
    assert!(port_open(port));
    assert!(
        mq.log_text().contains("mosquitto version"),
        "{}",
        mq.log_text()
    );
    let pid = mq.pid();
    drop(mq);
    assert!(gone(pid));
}

#[test]
fn redis_answers_and_a_durable_one_survives_sigkill() {
    use std::io::{Read, Write};
    let cmd = |port: u16, c: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(c).expect("write");
        let mut b = [0u8; 256];
        let n = s.read(&mut b).expect("read");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let r = Redis::start();
    assert_ne!(r.port(), 6379);
    assert_eq!(r.url(), format!("redis://127.0.0.1:{}", r.port()));
    assert_eq!(cmd(r.port(), b"PING\r\n"), "+PONG\r\n");
    drop(r);

    let data = tempfile::tempdir().expect("tempdir");
    let port = tapbus_testsupport::free_port();
    let r = Redis::start_durable(port, data.path());
    assert_eq!(cmd(port, b"RPUSH k v\r\n"), ":1\r\n");
    r.kill();
    assert!(!port_open(port));
    let _r = Redis::start_durable(port, data.path());
    assert_eq!(
        cmd(port, b"LLEN k\r\n"),
        ":1\r\n",
        "the acknowledged write survived"
    );
}

/// Three nodes form a cluster; a stream with three replicas can be created; after node 0
/// is killed, the stream still accepts publishes through the remaining nodes and keeps
/// every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cluster_replicates_and_survives_a_killed_node() {
    let mut c = NatsCluster::start(3);
    assert_eq!(c.len(), 3);
    let urls = c.urls();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    for i in 0..3 {
        assert!(urls.contains(&format!("nats://127.0.0.1:{}", c.node_port(i))));
        let routez = c.monitor(i, "/routez").expect("routez");
        assert_eq!(routez["num_routes"], 2, "node {i}: {routez}");
        assert_eq!(routez["routes"].as_array().map(Vec::len), Some(2));
        let jsz = c.monitor(i, "/jsz").expect("jsz");
        assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "node {i}: {jsz}");
    }
    let leader = c.wait_meta_leader(Duration::from_secs(5));
    assert!(leader < 3);

    // Created through node 0, with three replicas.
    let client = async_nats::connect(c.node_url(0))
        .await
        .expect("connect n0");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "REPL".into(),
            subjects: vec!["repl.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create an R3 stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3);
    let cluster = info.cluster.clone().expect("cluster info");
    assert_eq!(cluster.replicas.len(), 2, "{cluster:?}");
    for i in 0..5 {
        js.publish(format!("repl.{i}"), "before".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    drop(js);

    c.kill(0);
    assert!(!port_open(c.node_port(0)), "node 0 is gone");
    assert_eq!(c.running_urls().len(), 2);
    c.wait_meta_leader(Duration::from_secs(30));

    // A client of the remaining nodes: every publish is acknowledged (retried while the
    // stream elects a new leader, within a bound).
    let survivors = c.running_urls();
    let client = async_nats::ConnectOptions::new()
        .connect(survivors.as_slice())
        .await
        .expect("connect to the survivors");
    let js = async_nats::jetstream::new(client);
    let mut acked = 0;
    let t0 = std::time::Instant::now();
    while acked < 10 {
        let r = async {
            js.publish(format!("repl.after.{acked}"), "after".into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(ack)) => {
                assert_eq!(ack.stream, "REPL");
                acked += 1;
            }
            Ok(Err(e)) => eprintln!("publish not acknowledged yet: {e}"),
            Err(_) => eprintln!("publish not acknowledged within 5 s"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the stream accepts no publishes after node 0 was killed"
        );
    }
    let mut stream_now = js.get_stream("REPL").await.expect("stream");
    let state = stream_now.info().await.expect("info").state.clone();
    assert_eq!(state.messages, 15, "5 before + 10 after, each once");
    drop(stream);

    // And the messages are readable from the survivors.
    let consumer = stream_now
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("check".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = consumer
        .fetch()
        .max_messages(15)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let mut n = 0;
    while let Some(m) = msgs.next().await {
        m.expect("message");
        n += 1;
    }
    assert_eq!(n, 15);
    assert!(!port_open(c.node_port(0)), "the killed node stays down");

    // Node 0 comes back on its ports with its store and rejoins.
    c.restart(0);
    assert_eq!(c.running_urls().len(), 3);
    let routez = c.monitor(0, "/routez").expect("routez");
    assert_eq!(routez["num_routes"], 2, "{routez}");
    wait_until(
        "node 0 has the stream again",
        Duration::from_secs(30),
        || {
            c.monitor(0, "/jsz?streams=true")
                .is_some_and(|j| j["streams"].as_u64() == Some(1))
        },
    );
}
