//! What knowing "the server took this ack" costs on a real nats-server with JetStream:
//! the runtime's way (a plain `+ACK` publish per message, and the consumer's ack floor from
//! the info request the lag gauges already make every few seconds) against JetStream's
//! double ack (`AckSync`: the ack as a request, one reply per message), sequential as the
//! runtime's ack loop awaits each ack, and pipelined (a window of requests in flight).
//!
//! A stream `BENCH` (file storage) is filled with `ACK_BENCH_COUNT` (default 100,000)
//! messages of 914 bytes (a broker event's average size); each mode then reads all of them
//! on a fresh durable (explicit acks, pull batches of 1,024, `max_ack_pending` 20,000) and
//! acks each one. Reported per message: wall time, this process's CPU (the async-nats
//! client on two workers) and nats-server's CPU; then the durable must show every message
//! acked (ack floor = last sequence, nothing pending).
//!
//! ```sh
//! cargo bench -p tapbus-consumer --bench ack                 # every mode
//! ACK_BENCH_COUNT=50000 cargo bench -p tapbus-consumer --bench ack -- double
//! ```

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tapbus_testsupport::bench::{clock_ticks, cpu_secs, env_u64};
use tapbus_testsupport::servers::Nats;

const PAYLOAD: usize = 914;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `+ACK` published, not confirmed (the runtime).
    Ack,
    /// `AckSync`, each awaited before the next message.
    DoubleSeq,
    /// `AckSync`, up to this many in flight.
    DoubleWindow(usize),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Ack => "ack (publish, as the runtime)".into(),
            Mode::DoubleSeq => "double ack, sequential".into(),
            Mode::DoubleWindow(w) => format!("double ack, {w} in flight"),
        }
    }
}

async fn fill(url: &str, count: u64) -> jetstream::stream::Stream {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    // Publishes with acks, 1,024 in flight.
    let mut inflight = FuturesUnordered::new();
    for _ in 0..count {
        let f = js
            .publish("bench.x", payload.clone())
            .await
            .expect("publish");
        inflight.push(f.into_future());
        if inflight.len() >= 1024
            && let Some(r) = inflight.next().await
        {
            r.expect("stored");
        }
    }
    while let Some(r) = inflight.next().await {
        r.expect("stored");
    }
    stream
}

async fn run(stream: &jetstream::stream::Stream, mode: Mode, count: u64, nats_pid: u32) {
    let ticks = clock_ticks();
    let durable = format!("bench-{}", count_mode(mode));
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(1024)
        .messages()
        .await
        .expect("messages");
    let (me0, srv0) = (
        cpu_secs(std::process::id(), ticks),
        cpu_secs(nats_pid, ticks),
    );
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut inflight = FuturesUnordered::new();
    while n < count {
        let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .expect("a message within 30 s")
            .expect("stream open")
            .expect("message");
        n += 1;
        match mode {
            Mode::Ack => m.ack().await.expect("ack"),
            Mode::DoubleSeq => m.double_ack().await.expect("double ack"),
            Mode::DoubleWindow(w) => {
                inflight.push(async move { m.double_ack().await });
                if inflight.len() >= w
                    && let Some(r) = inflight.next().await
                {
                    r.expect("double ack");
                }
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r.expect("double ack");
    }
    let wall = t0.elapsed().as_secs_f64();
    let me = cpu_secs(std::process::id(), ticks) - me0;
    let srv = cpu_secs(nats_pid, ticks) - srv0;
    drop(msgs);
    // Every ack taken by the server (a plain ack is only published: wait for it).
    let mut c = consumer;
    let t = Instant::now();
    let (floor, pending) = loop {
        let i = c.info().await.expect("info");
        let (f, p) = (i.ack_floor.stream_sequence, i.num_ack_pending);
        if (f >= count && p == 0) || t.elapsed() > Duration::from_secs(10) {
            break (f, p);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let per = |s: f64| s * 1e6 / count as f64;
    println!(
        "{:<32} {:>9.0} msg/s  wall {:>6.2} µs/msg  client CPU {:>5.2} µs/msg  nats-server CPU {:>5.2} µs/msg  (ack floor {floor}, pending {pending})",
        mode.name(),
        count as f64 / wall,
        per(wall),
        per(me),
        per(srv),
    );
    println!(
        "RESULT {{\"mode\":\"{}\",\"count\":{count},\"msgs_per_s\":{:.0},\"client_us\":{:.3},\"server_us\":{:.3},\"ack_floor\":{floor},\"ack_pending\":{pending}}}",
        mode.name(),
        count as f64 / wall,
        per(me),
        per(srv)
    );
}

fn count_mode(m: Mode) -> String {
    match m {
        Mode::Ack => "ack".into(),
        Mode::DoubleSeq => "double-seq".into(),
        Mode::DoubleWindow(w) => format!("double-{w}"),
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let count = env_u64("ACK_BENCH_COUNT", 100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t = Instant::now();
        let stream = fill(nats.url(), count).await;
        println!(
            "stream BENCH: {count} messages of {PAYLOAD} bytes stored in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for mode in [
            Mode::Ack,
            Mode::DoubleSeq,
            Mode::DoubleWindow(64),
            Mode::DoubleWindow(1024),
        ] {
            if !filter.is_empty() && !filter.iter().any(|f| mode.name().contains(f.as_str())) {
                continue;
            }
            run(&stream, mode, count, nats.pid()).await;
        }
    });
    nats.terminate();
}
