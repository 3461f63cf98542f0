//! End-to-end benchmark of the arrows bus --JSON--> tapbus-loki --push--> Loki: lines/s
//! from the bus into the test suite's Loki receiver (`tapbus_testsupport::loki`, which
//! decodes every body and enforces Loki's rules, in this process), CPU µs per line of
//! tapbus-loki (`/proc/PID/stat` utime + stime) and of the receiver (this process's own
//! CPU over the run: the receiver's threads, plus a poll every 20 ms), bytes per push.
//!
//! ```sh
//! cargo build --release -p tapbus-broker --examples # the release broker and fstrm_blast
//! cargo bench -p tapbus-loki --bench e2e            # both runs, LOKI_BENCH_COPIES=3 (x 100,002 lines)
//! cargo bench -p tapbus-loki --bench e2e -- core    # one run (jetstream, core or paced)
//! LOKI_BENCH_QUERY=batch=256 cargo bench -p tapbus-loki --bench e2e -- jetstream   # more input URL query
//! ```
//!
//! - **jetstream**: the bulk capture is replayed `LOKI_BENCH_COPIES` times into JetStream
//!   first; then tapbus-loki starts on a fresh durable and the clock runs from its start
//!   until the receiver has received every line.
//! - **core**: tapbus-loki subscribes to `dnstap.>` on NATS core, then the broker publishes
//!   the copies at full speed; the clock runs from the broker's start until the last
//!   line arrived (waiting until none has for 3 s). Lines the NATS client dropped (slow consumer) show as lost.
//! - **paced**: the same path at a steady rate (`LOKI_BENCH_RATE` frames/s, default
//!   200,000, `LOKI_BENCH_COUNT` frames, default 600,000) written by `fstrm_blast` into
//!   the broker's unix socket (`cargo build --release -p tapbus-broker --examples`).
//!
//! The copies are identical lines: the receiver de-duplicates them, as Loki does, so lines
//! are counted as received by the receiver (stored + de-duplicated). Prints a summary
//! and a line `RESULT {json}` per run. Bounded: 300 s at most per run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapbus_testsupport::bench::{
    Paced, clock_ticks, cpu_secs, env_u64, fill_jetstream, metric, replay_core,
};
use tapbus_testsupport::loki::{Limits, LokiReceiver};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, testdata};

/// What one run measured.
struct Run {
    name: &'static str,
    expected: u64,
    received: u64,
    seconds: f64,
    loki_cpu: f64,
    recv_cpu: f64,
    pushes: u64,
    body_bytes: u64,
    stored: u64,
    deduplicated: u64,
    retries: f64,
    /// nats-server's CPU over the timed part of the run.
    nats_cpu: f64,
    /// The core and paced runs: what the broker offered (events/s), its CPU, and the
    /// seconds from the last frame written to the last line received.
    offered: Option<(f64, f64, f64)>,
}

impl Run {
    fn report(&self) {
        let got = self.received.max(1) as f64;
        let requests = self.pushes.max(1) as f64;
        let lines_per_s = self.received as f64 / self.seconds;
        let loki_us = self.loki_cpu * 1e6 / got;
        let recv_us = self.recv_cpu * 1e6 / got;
        let bytes_per_push = self.body_bytes as f64 / requests;
        let lines_per_push = self.received as f64 / requests;
        let lost = self.expected.saturating_sub(self.received);
        let nats_us = self.nats_cpu * 1e6 / got;
        let offered = match self.offered {
            Some((rate, cpu, tail)) => format!(
                "; the broker offered {rate:.0} events/s ({:.2} µs CPU/event); the last line \
                 arrived {tail:.2} s after the last frame (a partial batch waits up to \
                 batch_wait, 1 s)",
                cpu * 1e6 / self.expected.max(1) as f64
            ),
            None => String::new(),
        };
        println!(
            "{}: {}/{} lines ({lost} lost) in {:.2} s = {lines_per_s:.0} lines/s; \
             tapbus-loki CPU {:.2} s = {loki_us:.2} µs/line; receiver CPU {:.2} s = {recv_us:.2} µs/line; \
             {} pushes, {bytes_per_push:.0} bytes/push (snappy), {lines_per_push:.0} lines/push; \
             nats-server CPU {:.2} s = {nats_us:.2} µs/line; retries {}{offered}",
            self.name,
            self.received,
            self.expected,
            self.seconds,
            self.loki_cpu,
            self.recv_cpu,
            self.pushes,
            self.nats_cpu,
            self.retries
        );
        let result = serde_json::json!({
            "run": self.name,
            "lines": self.received,
            "expected": self.expected,
            "lost": lost,
            "seconds": self.seconds,
            "lines_per_s": lines_per_s.round(),
            "loki_cpu_s": self.loki_cpu,
            "loki_us_per_line": loki_us,
            "receiver_cpu_s": self.recv_cpu,
            "receiver_us_per_line": recv_us,
            "nats_cpu_s": self.nats_cpu,
            "nats_us_per_line": nats_us,
            "pushes": self.pushes,
            "bytes_per_push": bytes_per_push.round(),
            "lines_per_push": lines_per_push.round(),
            "stored": self.stored,
            "deduplicated": self.deduplicated,
        });
        println!("RESULT {result}");
    }
}

/// The receiver with Loki's rules, less the ones a replay of old captures breaks.
fn receiver() -> LokiReceiver {
    LokiReceiver::start_with(Limits {
        reject_old_samples: false,
        max_chunk_age: Duration::from_secs(100 * 365 * 24 * 3600),
        ingestion_rate_bytes: 1e15,
        ingestion_burst_bytes: 1e15,
        max_recorded_requests: 1000,
        ..Limits::default()
    })
}

fn received(r: &LokiReceiver) -> u64 {
    let s = r.stats();
    s.entries_accepted + s.deduplicated + s.refused.values().sum::<u64>()
}

fn spawn_loki(bin: &Path, input: &str, push_url: &str, addr: &str) -> Proc {
    eprintln!("input {input}");
    Proc::spawn(
        Command::new(bin)
            .args([
                "--input",
                input,
                "--url",
                push_url,
                "--metrics-listen",
                addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Stops the clock and reads the counters.
fn finish(
    name: &'static str,
    r: &LokiReceiver,
    loki: &mut Proc,
    addr: &str,
    expected: u64,
    seconds: f64,
    recv_cpu: f64,
) -> Run {
    let ticks = clock_ticks();
    let loki_cpu = cpu_secs(loki.pid(), ticks);
    let s = r.stats();
    let metrics = http_get(addr, "/metrics").unwrap_or_default();
    let _ = loki.terminate();
    Run {
        name,
        expected,
        received: received(r),
        seconds,
        loki_cpu,
        recv_cpu,
        pushes: s.total_requests(),
        body_bytes: s.body_bytes,
        stored: s.entries_accepted,
        deduplicated: s.deduplicated,
        retries: metric(&metrics, "tapbus_loki_retries_total"),
        nats_cpu: 0.0,
        offered: None,
    }
}

/// A JetStream backlog drained by one durable (explicit ack per message).
fn jetstream(loki_bin: &Path, broker: &Path, copies: usize) -> Run {
    let ticks = clock_ticks();
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let total = fill_jetstream(broker, nats.url(), BULK, copies);
    let r = receiver();
    let addr = format!("127.0.0.1:{}", free_port());
    // `LOKI_BENCH_QUERY`: more of the input URL's query (`batch=4096`, ...).
    let extra = std::env::var("LOKI_BENCH_QUERY")
        .map(|q| format!("&{q}"))
        .unwrap_or_default();
    let input = format!(
        "{}/DNSTAP?durable=bench&max_ack_pending=20000{extra}",
        nats.url().replace("nats://", "jetstream://")
    );
    let self0 = cpu_secs(std::process::id(), ticks);
    let nats0 = cpu_secs(nats.pid(), ticks);
    let t0 = Instant::now();
    let mut loki = spawn_loki(loki_bin, &input, &r.push_url(), &addr);
    while received(&r) < total && t0.elapsed() < LIMIT && loki.is_running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let recv_cpu = cpu_secs(std::process::id(), ticks) - self0;
    let nats_cpu = cpu_secs(nats.pid(), ticks) - nats0;
    let mut run = finish("jetstream", &r, &mut loki, &addr, total, secs, recv_cpu);
    run.nats_cpu = nats_cpu;
    assert_eq!(
        run.received, total,
        "not every line arrived within {LIMIT:?}"
    );
    run
}

/// NATS core (at most once, no acks): the broker publishes the copies at full speed while
/// tapbus-loki reads `dnstap.>`; what the subscription could not take in time is dropped
/// by the NATS client (slow consumer) and shows as lines lost.
fn core(loki_bin: &Path, broker: &Path, copies: usize) -> Run {
    let ticks = clock_ticks();
    let nats = Nats::start();
    let r = receiver();
    let addr = format!("127.0.0.1:{}", free_port());
    let input = format!("{}/dnstap.>", nats.url());
    let mut loki = spawn_loki(loki_bin, &input, &r.push_url(), &addr);
    // `/health` answers 200 once every input is subscribed and connected.
    let t = Instant::now();
    while http_get(&addr, "/health").is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_secs(loki.pid(), ticks);
    let self0 = cpu_secs(std::process::id(), ticks);
    let nats0 = cpu_secs(nats.pid(), ticks);
    let t0 = Instant::now();
    let replay = replay_core(broker, nats.url(), BULK, copies);
    let total = (copies * testdata::expected_count(BULK)) as u64;
    let secs = settle(&r, total, t0).max(replay.seconds);
    let recv_cpu = cpu_secs(std::process::id(), ticks) - self0;
    let mut run = finish("core", &r, &mut loki, &addr, total, secs, recv_cpu);
    run.loki_cpu -= cpu0;
    run.nats_cpu = cpu_secs(nats.pid(), ticks) - nats0;
    run.offered = Some((
        total as f64 / replay.seconds,
        replay.broker_cpu,
        secs - replay.seconds,
    ));
    run
}

/// NATS core at a steady rate: `fstrm_blast` writes `LOKI_BENCH_COUNT` frames (default
/// 600,000, the bulk capture cycled) at `LOKI_BENCH_RATE` frames/s (default 200,000) into
/// the broker's unix socket; the broker publishes to NATS core, tapbus-loki reads
/// `dnstap.>`. The clock runs from the first frame until no line has arrived for 1 s.
fn paced(loki_bin: &Path, broker: &Path) -> Run {
    let count = env_u64("LOKI_BENCH_COUNT", 600_000);
    let rate = env_u64("LOKI_BENCH_RATE", 200_000);
    let ticks = clock_ticks();
    let nats = Nats::start();
    let r = receiver();
    let addr = format!("127.0.0.1:{}", free_port());
    let input = format!("{}/dnstap.>", nats.url());
    let mut loki = spawn_loki(loki_bin, &input, &r.push_url(), &addr);
    let cpu = |pid| cpu_secs(pid, ticks);
    let (mut loki0, mut nats0, mut self0) = (0.0, 0.0, 0.0);
    // `/health` answers 200 once every input is subscribed and connected.
    let p = Paced::run(broker, nats.url(), BULK, count, rate, || {
        let up = http_get(&addr, "/health").is_some();
        (loki0, nats0, self0) = (cpu(loki.pid()), cpu(nats.pid()), cpu(std::process::id()));
        up
    });
    let secs = settle(&r, count, p.started).max(p.seconds);
    let recv_cpu = cpu(std::process::id()) - self0;
    let nats_cpu = cpu(nats.pid()) - nats0;
    let blast_secs = p.seconds;
    let replay = p.stop();
    let mut run = finish("paced", &r, &mut loki, &addr, count, secs, recv_cpu);
    run.loki_cpu -= loki0;
    run.nats_cpu = nats_cpu;
    run.offered = Some((
        count as f64 / blast_secs,
        replay.broker_cpu,
        secs - blast_secs,
    ));
    eprintln!(
        "paced: the broker published {:.0} of {count} frames",
        replay.published
    );
    run
}

/// Waits until the receiver has `expected` lines or none arrived for 3 s (longer than
/// `batch_wait`, 1 s, after which the last partial batch goes out; bounded by [`LIMIT`]);
/// returns the seconds from `t0` to the last line that arrived.
fn settle(r: &LokiReceiver, expected: u64, t0: Instant) -> f64 {
    let mut got = received(r);
    let mut last = t0.elapsed();
    while got < expected && t0.elapsed() < LIMIT && t0.elapsed() - last < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
        let now = received(r);
        if now != got {
            got = now;
            last = t0.elapsed();
        }
    }
    last.as_secs_f64()
}

const BULK: &str = "bulk-100k.fstrm";
const LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let copies = env_u64("LOKI_BENCH_COPIES", 3) as usize;
    let loki_bin = PathBuf::from(env!("CARGO_BIN_EXE_tapbus-loki"));
    let broker = loki_bin.with_file_name("tapbus-broker");
    assert!(
        broker.exists(),
        "{} missing: cargo build --release -p tapbus-broker first",
        broker.display()
    );
    let which = std::env::args()
        .skip(1)
        .find(|a| ["jetstream", "core", "paced"].contains(&a.as_str()));
    let run = |name: &str| which.is_none() || which.as_deref() == Some(name);
    if run("jetstream") {
        jetstream(&loki_bin, &broker, copies).report();
    }
    if run("core") {
        core(&loki_bin, &broker, copies).report();
    }
    if run("paced") {
        paced(&loki_bin, &broker).report();
    }
}
