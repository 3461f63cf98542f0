//! End-to-end benchmark of the arrows JetStream --JSON--> tapbus-loki --push--> Loki:
//! lines/s from the bus into the test suite's Loki receiver (`tapbus_testsupport::loki`,
//! which decodes every body and enforces Loki's rules, in this process), CPU µs per line of
//! tapbus-loki (`/proc/PID/stat` utime + stime) and of the receiver (this process's own
//! CPU over the run: the receiver's threads, plus a poll every 20 ms), bytes per push.
//!
//! ```sh
//! cargo build --release -p tapbus-broker            # the replays use the release broker
//! cargo bench -p tapbus-loki --bench e2e            # LOKI_BENCH_COPIES=3 (x 100,002 lines)
//! ```
//!
//! The bulk capture is replayed `LOKI_BENCH_COPIES` times into JetStream first (identical
//! lines: the receiver de-duplicates the copies, as Loki does, so lines are counted as
//! received by the receiver: stored + de-duplicated); then tapbus-loki starts on a fresh
//! durable and the clock runs from its start until the receiver has received every line.
//! Prints a summary and a final line `RESULT {json}`. Bounded: 300 s at most.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapbus_testsupport::bench::{clock_ticks, cpu_secs, fill_jetstream, metric};
use tapbus_testsupport::loki::{Limits, LokiReceiver};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get};

fn main() {
    let copies: usize = std::env::var("LOKI_BENCH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let loki_bin = PathBuf::from(env!("CARGO_BIN_EXE_tapbus-loki"));
    let broker = loki_bin.with_file_name("tapbus-broker");
    assert!(
        broker.exists(),
        "{} missing: cargo build --release -p tapbus-broker first",
        broker.display()
    );
    let ticks = clock_ticks();
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let total = fill_jetstream(&broker, nats.url(), "bulk-100k.fstrm", copies);
    let r = LokiReceiver::start_with(Limits {
        reject_old_samples: false,
        max_chunk_age: Duration::from_secs(100 * 365 * 24 * 3600),
        ingestion_rate_bytes: 1e15,
        ingestion_burst_bytes: 1e15,
        max_recorded_requests: 1000,
        ..Limits::default()
    });
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let input = format!(
        "{}/DNSTAP?durable=bench&max_ack_pending=20000",
        nats.url().replace("nats://", "jetstream://")
    );
    let self_pid = std::process::id();
    let self0 = cpu_secs(self_pid, ticks);
    let t0 = Instant::now();
    let mut loki = Proc::spawn(
        Command::new(&loki_bin)
            .args([
                "--input",
                &input,
                "--url",
                &r.push_url(),
                "--metrics-listen",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let received = |r: &LokiReceiver| {
        let s = r.stats();
        s.entries_accepted + s.deduplicated + s.refused.values().sum::<u64>()
    };
    let limit = Duration::from_secs(300);
    while received(&r) < total && t0.elapsed() < limit && loki.is_running() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let loki_cpu = cpu_secs(loki.pid(), ticks);
    let recv_cpu = cpu_secs(self_pid, ticks) - self0;
    let s = r.stats();
    let got = received(&r);
    let metrics = http_get(&addr, "/metrics").unwrap_or_default();
    let _ = loki.terminate();
    let requests = s.total_requests().max(1);
    let lines_per_s = got as f64 / elapsed;
    let loki_us = loki_cpu * 1e6 / got.max(1) as f64;
    let recv_us = recv_cpu * 1e6 / got.max(1) as f64;
    let bytes_per_push = s.body_bytes as f64 / requests as f64;
    let lines_per_push = got as f64 / requests as f64;
    println!(
        "tapbus-loki e2e: {got}/{total} lines in {elapsed:.2} s = {lines_per_s:.0} lines/s; \
         tapbus-loki CPU {loki_cpu:.2} s = {loki_us:.2} µs/line; receiver CPU {recv_cpu:.2} s = {recv_us:.2} µs/line; \
         {requests} pushes, {bytes_per_push:.0} bytes/push (snappy), {lines_per_push:.0} lines/push; \
         retries {}",
        metric(&metrics, "tapbus_loki_retries_total")
    );
    println!(
        "RESULT {{\"lines\":{got},\"expected\":{total},\"seconds\":{elapsed:.3},\"lines_per_s\":{lines_per_s:.0},\
         \"loki_cpu_s\":{loki_cpu:.3},\"loki_us_per_line\":{loki_us:.3},\"receiver_cpu_s\":{recv_cpu:.3},\
         \"receiver_us_per_line\":{recv_us:.3},\"pushes\":{requests},\"bytes_per_push\":{bytes_per_push:.0},\
         \"lines_per_push\":{lines_per_push:.0},\"stored\":{},\"deduplicated\":{}}}",
        s.entries_accepted, s.deduplicated
    );
    assert_eq!(got, total, "not every line arrived within {limit:?}");
}
