//! Exact accounting through a bus outage, for every bus: the bus server is stopped in the
//! middle of a paced replay and started again, and afterwards
//!
//!   distinct events the subscriber received + events the broker counted as dropped
//!     == events sent, exactly,
//!
//! with the broker's own `published + dropped == sent`, every received event one of those
//! sent, and the outage long enough to overflow the output's bound (so `dropped > 0`).
//!
//! NATS and MQTT are pub/sub: a subscriber only gets what is published while it is
//! subscribed. The broker reaches the server through a [`Gate`] (a loopback TCP forwarder)
//! that the test shuts before stopping the server and opens only once the subscriber is
//! subscribed again, so a re-sent event cannot arrive before the subscriber is back. The
//! server itself is really stopped (`kill PID`, SIGTERM) and restarted on the same port;
//! JetStream keeps its store directory, and Redis (list mode, AOF with fsync always) is
//! killed with SIGKILL and keeps its append-only file.

use std::collections::HashSet;
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::harness::*;
use crate::nats_js::stream_messages;
use crate::redis::lrange;

/// Events sent per test: 6000 at 2000/s, the outage from 1 s to about 2.5 s.
const SENT: usize = 6000;
const PER_TICK: usize = 20;
const TICK: Duration = Duration::from_millis(10);
const BEFORE_OUTAGE: Duration = Duration::from_millis(1000);
const OUTAGE: Duration = Duration::from_millis(1500);
/// The output's queue: small, so the outage overflows it.
const QUEUE: usize = 256;

/// A loopback TCP forwarder to a bus server that the test can shut: `close` cuts every
/// forwarded connection and refuses new ones until `open`.
struct Gate {
    port: u16,
    state: Arc<Mutex<GateState>>,
    accept: JoinHandle<()>,
}

struct GateState {
    open: bool,
    conns: Vec<JoinHandle<()>>,
}

impl Gate {
    async fn start(upstream: u16) -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = l.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(GateState {
            open: true,
            conns: Vec::new(),
        }));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = l.accept().await else {
                    continue;
                };
                let mut g = st.lock().expect("gate lock");
                if !g.open {
                    continue; // dropping `down` refuses the connection
                }
                g.conns.push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Gate {
            port,
            state,
            accept,
        }
    }

    fn close(&self) {
        let mut g = self.state.lock().expect("gate lock");
        g.open = false;
        for c in g.conns.drain(..) {
            c.abort();
        }
    }

    fn open(&self) {
        self.state.lock().expect("gate lock").open = true;
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.accept.abort();
    }
}

/// The first `SENT` data frames of the bulk capture whose events are all different (so a
/// re-sent copy is recognisable), and the reference key of each event.
fn unique_frames() -> (Vec<Bytes>, HashSet<String>) {
    let mut frames = Vec::with_capacity(SENT);
    let mut keys = HashSet::new();
    let mut out = Vec::new();
    for f in data_frames(&capture("bulk-100k.fstrm")) {
        out.clear();
        if tapbus_proto::event::encode(f.clone(), "ref", &mut out).is_err() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out).expect("event json");
        if keys.insert(key(&v)) {
            frames.push(f);
            if frames.len() == SENT {
                break;
            }
        }
    }
    assert_eq!(
        frames.len(),
        SENT,
        "the bulk capture has enough distinct events"
    );
    (frames, keys)
}

/// A DNS server's dnstap writer at a steady rate: handshake, `PER_TICK` frames every
/// `TICK`, STOP, FINISH.
async fn send_paced(sock: PathBuf, frames: Vec<Bytes>) {
    let s = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect to the broker");
    let mut w = tapbus_testsupport::fstrm::Writer::open(s)
        .await
        .expect("READY, ACCEPT, START");
    let mut tick = tokio::time::interval(TICK);
    for chunk in frames.chunks(PER_TICK) {
        tick.tick().await;
        w.send(chunk).await.expect("frames");
    }
    w.finish().await.expect("STOP, FINISH");
}

/// The exact equation, on the subscriber's side.
fn assert_exact(
    output: &str,
    broker: &Broker,
    received: &[Vec<u8>],
    reference: &HashSet<String>,
    published: usize,
    dropped: usize,
) {
    let mut distinct = HashSet::new();
    for payload in received {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
            panic!(
                "{output}: not JSON ({e}): {}",
                String::from_utf8_lossy(payload)
            )
        });
        let k = key(&v);
        assert!(reference.contains(&k), "{output}: an event never sent: {v}");
        distinct.insert(k);
    }
    let resent = broker.metric("tapbus_resent_total", &[&format!("output=\"{output}\"")]);
    eprintln!(
        "{output}: sent {SENT}, received {} ({} distinct), dropped {dropped}, published {published}, resent {resent}",
        received.len(),
        distinct.len()
    );
    assert_eq!(
        broker.metric("tapbus_events_total", &[]),
        SENT as f64,
        "every frame became an event"
    );
    assert!(
        dropped > 0,
        "{output}: the outage should overflow the bound (queue {QUEUE})"
    );
    assert_eq!(
        distinct.len() + dropped,
        SENT,
        "{output}: received {} distinct + dropped {dropped} != sent {SENT}\n{}",
        distinct.len(),
        broker.log_text()
    );
    assert_eq!(distinct.len(), published, "{output}: received == published");
}

fn broker_for(dir: &Path, output: &str, body: &str) -> (Broker, PathBuf) {
    let sock = dir.join("dnstap.sock");
    let cfg = write_broker_config(dir, &sock, output, &format!("{body}queue = {QUEUE}\n"));
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_metric("tapbus_output_up", &[&format!("output=\"{output}\"")], 1.0);
    (broker, sock)
}

/// Adds what arrives to `got` until it holds `want` distinct payloads or 3 s pass without
/// one, then whatever late copies come within 300 ms.
async fn drain_distinct(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    want: usize,
    got: &mut Vec<Vec<u8>>,
) {
    let mut distinct: HashSet<Vec<u8>> = got.iter().cloned().collect();
    while distinct.len() < want {
        match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            Ok(Some(p)) => {
                distinct.insert(p.clone());
                got.push(p);
            }
            _ => break,
        }
    }
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        got.push(p);
    }
}

/// A NATS subscriber that reconnects by itself; `resubscribed` proves (by a round trip of
/// its own probe message) that the server has its subscription again.
struct NatsCollector {
    client: async_nats::Client,
    events: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    probes: async_nats::Subscriber,
}

impl NatsCollector {
    async fn start(url: &str) -> NatsCollector {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 20)
            .max_reconnects(None)
            .reconnect_delay_callback(|_| Duration::from_millis(20))
            .connect(url)
            .await
            .expect("subscriber connect");
        let mut s = client.subscribe("dnstap.>").await.expect("subscribe");
        let probes = client.subscribe("probe.accounting").await.expect("probe");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = s.next().await {
                if tx.send(m.payload.to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut c = NatsCollector {
            client,
            events,
            probes,
        };
        c.resubscribed().await;
        c
    }

    async fn resubscribed(&mut self) {
        let t0 = Instant::now();
        loop {
            let _ = self.client.publish("probe.accounting", "p".into()).await;
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), self.probes.next()).await
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "subscriber did not come back"
            );
        }
    }

    /// Everything received until `want` distinct payloads or 3 s of silence.
    async fn drain(&mut self, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        drain_distinct(&mut self.events, want, &mut got).await;
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_core_outage_is_counted_exactly() {
    let (frames, reference) = unique_frames();
    let nats = Nats::start();
    let port = nats.port();
    let gate = Gate::start(port).await;
    let mut sub = NatsCollector::start(nats.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_for(
        dir.path(),
        "nats",
        &format!("url = \"nats://127.0.0.1:{}\"\n", gate.port),
    );

    let sender = tokio::spawn(send_paced(sock, frames));
    tokio::time::sleep(BEFORE_OUTAGE).await;
    gate.close();
    nats.terminate();
    tokio::time::sleep(OUTAGE).await;
    let _nats = Nats::start_on(port);
    sub.resubscribed().await;
    gate.open();
    sender.await.expect("sender");

    let (published, dropped) = broker.wait_settled("nats", SENT);
    let got = sub.drain(published).await;
    assert_exact("nats", &broker, &got, &reference, published, dropped);
    let log = broker.log_text();
    assert!(log.contains("NATS disconnected"), "{log}");
    assert!(log.matches("NATS connected").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_outage_is_counted_exactly() {
    let (frames, reference) = unique_frames();
    let store = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(store.path());
    let port = nats.port();
    let gate = Gate::start(port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_for(
        dir.path(),
        "nats",
        &format!(
            "url = \"nats://127.0.0.1:{}\"\njetstream = true\nack_window = 256\n",
            gate.port
        ),
    );

    let sender = tokio::spawn(send_paced(sock, frames));
    tokio::time::sleep(BEFORE_OUTAGE).await;
    gate.close();
    nats.terminate();
    tokio::time::sleep(OUTAGE).await;
    let nats = Nats::start_jetstream_on(port, store.path());
    gate.open();
    sender.await.expect("sender");

    let (published, dropped) = broker.wait_settled("nats", SENT);
    // The stream is what was received: read it all back.
    let got: Vec<Vec<u8>> = stream_messages(nats.url(), "DNSTAP")
        .await
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(
        got.len(),
        published,
        "the stream holds every acknowledged event once (Nats-Msg-Id de-duplication)"
    );
    assert_exact("nats", &broker, &got, &reference, published, dropped);
}

/// Subscribes with rumqttc (QoS 0 on `dnstap/#`); `start` returns once the server has
/// acknowledged the subscription.
struct MqttCollector {
    events: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    task: JoinHandle<()>,
}

impl MqttCollector {
    async fn start(port: u16, id: &str) -> MqttCollector {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 22, 1 << 22)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
        client
            // QoS 1: mosquitto queues for this subscriber what it acknowledged to the
            // broker (at QoS 0 it may drop under load, and the count would be short).
            .subscribe("dnstap/#", rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut ready_tx = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = tx.send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    // The server went away: this subscriber is done (a new one is started).
                    Err(_) => return,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("SUBACK within 10 s")
            .expect("subscriber task");
        MqttCollector { events, task }
    }

    async fn drain(&mut self, want: usize, got: &mut Vec<Vec<u8>>) {
        drain_distinct(&mut self.events, want, got).await;
    }
}

impl Drop for MqttCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_qos1_outage_is_counted_exactly() {
    let (frames, reference) = unique_frames();
    let port = free_port();
    let mq = Mosquitto::start_on(port);
    let gate = Gate::start(port).await;
    let mut before = MqttCollector::start(port, "accounting-sub-1").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_for(
        dir.path(),
        "mqtt",
        &format!("url = \"mqtt://127.0.0.1:{}\"\nqos = 1\n", gate.port),
    );

    let sender = tokio::spawn(send_paced(sock, frames));
    tokio::time::sleep(BEFORE_OUTAGE).await;
    gate.close();
    // What mosquitto acknowledged reaches the first subscriber before mosquitto stops
    // (it keeps nothing across a restart): read until it has been quiet for 1 s.
    let mut got = Vec::new();
    let quiet_by = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(p)) = tokio::time::timeout_at(
        quiet_by.min(tokio::time::Instant::now() + Duration::from_secs(1)),
        before.events.recv(),
    )
    .await
    {
        got.push(p);
    }
    mq.terminate();
    tokio::time::sleep(OUTAGE).await;
    let _mq = Mosquitto::start_on(port);
    let mut after = MqttCollector::start(port, "accounting-sub-2").await;
    gate.open();
    sender.await.expect("sender");

    let (published, dropped) = broker.wait_settled("mqtt", SENT);
    while let Ok(p) = before.events.try_recv() {
        got.push(p);
    }
    after.drain(published, &mut got).await;
    assert_exact("mqtt", &broker, &got, &reference, published, dropped);
    let log = broker.log_text();
    assert!(log.contains("MQTT disconnected"), "{log}");
    assert!(log.matches("MQTT connected").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_is_counted_exactly() {
    let (frames, reference) = unique_frames();
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // An append-only file fsynced on every write: what it acknowledged survives SIGKILL.
    let redis = Redis::start_durable(port, data.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, sock) = broker_for(
        dir.path(),
        "redis",
        &format!(
            "url = \"redis://127.0.0.1:{}\"\nmode = \"list\"\nkey = \"dnstap\"\nmax_len = 1000000\n",
            redis.port()
        ),
    );

    let sender = tokio::spawn(send_paced(sock, frames));
    tokio::time::sleep(BEFORE_OUTAGE).await;
    redis.kill();
    assert!(StdTcpStream::connect(("127.0.0.1", port)).is_err());
    tokio::time::sleep(OUTAGE).await;
    let _redis = Redis::start_durable(port, data.path());
    sender.await.expect("sender");

    let (published, dropped) = broker.wait_settled("redis", SENT);
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let got = lrange(&mut con, "dnstap").await;
    assert_exact("redis", &broker, &got, &reference, published, dropped);
    let log = broker.log_text();
    assert!(log.contains("Redis down"), "{log}");
    assert!(log.contains("Redis back"), "{log}");
}

/// The gate itself: closed, it refuses; open, it forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_refuses_while_closed() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_port = upstream.local_addr().expect("addr").port();
    let gate = Gate::start(up_port).await;
    upstream.set_nonblocking(true).expect("nonblocking");
    gate.close();
    {
        use tokio::io::AsyncReadExt;
        let mut s = TcpStream::connect(("127.0.0.1", gate.port))
            .await
            .expect("connect");
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("closed at once");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "a closed gate drops the connection"
        );
    }
    assert!(
        upstream.accept().is_err(),
        "nothing reached upstream while closed"
    );
    gate.open();
    let _s = TcpStream::connect(("127.0.0.1", gate.port))
        .await
        .expect("connect");
    wait_until_async(
        "the connection forwarded upstream",
        Duration::from_secs(5),
        || upstream.accept().is_ok(),
    )
    .await;
}
