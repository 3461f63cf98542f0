//! End-to-end benchmark of the arrows broker --JSON--> JetStream --> tapbus-aggregate
//! --batches--> tapbus-mimir --remote write--> Prometheus, with real processes: events/s
//! through tapbus-aggregate, CPU µs per event of each process (`/proc/PID/stat`), and
//! whether every event was counted (zero loss: the counters equal the events published).
//!
//! ```sh
//! cargo build --release -p tapbus-broker -p tapbus-mimir --examples   # the release binaries, fstrm_blast
//! cargo bench -p tapbus-aggregate --bench e2e               # AGG_BENCH_COPIES=3 (x 100,002 events)
//! ```
//!
//! Four runs, each on a fresh NATS server:
//! - **drain**: the bulk capture is replayed `AGG_BENCH_COPIES` times into JetStream
//!   first; then tapbus-aggregate starts on a fresh durable and the clock runs until its
//!   `dnstap_messages_total` counts every event: how fast it reads a backlog.
//! - **live**: tapbus-aggregate (publishing a batch every second) and tapbus-mimir (into a
//!   real Prometheus) run first; then the broker replays the copies at full speed while
//!   aggregate reads, all on this machine's cores at once. The clock runs from the
//!   broker's start until aggregate has counted every event; the broker's own time is
//!   the rate offered. Then Prometheus must show every event too (mimir kept up).
//!
//! - **core**: the same over NATS core (`nats://.../dnstap.>`, at most once, no acks):
//!   the broker publishes at full speed; what aggregate could not take is lost (the
//!   client's slow-consumer drops) and reported.
//! - **paced**: NATS core at a steady `AGG_BENCH_RATE` (default 200,000 frames/s,
//!   `AGG_BENCH_COUNT` frames, default 1,000,000) written by `fstrm_blast` into the
//!   broker's unix socket (`cargo build --release -p tapbus-broker --examples`).
//!
//! `cargo bench -p tapbus-aggregate --bench e2e -- live` runs one of them. Prints a
//! summary per run and `RESULT {json}` lines. Bounded: 300 s per wait.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tapbus_testsupport::bench::{
    Paced, clock_ticks, cpu_secs, env_u64, fill_jetstream, metric, replay_core,
};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::{free_port, http_get, testdata};

const BULK: &str = "bulk-100k.fstrm";
const LIMIT: Duration = Duration::from_secs(300);

struct Bins {
    aggregate: PathBuf,
    broker: PathBuf,
    mimir: PathBuf,
}

fn aggregate(bins: &Bins, nats: &Nats, addr: &str, output: bool) -> Proc {
    let input = format!(
        "{}/DNSTAP?durable=bench&max_ack_pending=20000",
        nats.url().replace("nats://", "jetstream://")
    );
    aggregate_from(bins, nats, &input, addr, output)
}

fn aggregate_from(bins: &Bins, nats: &Nats, input: &str, addr: &str, output: bool) -> Proc {
    let mut cmd = Command::new(&bins.aggregate);
    cmd.args([
        "--input",
        input,
        "--metrics-listen",
        addr,
        "--instance",
        "bench",
    ])
    .env("TAPBUS_AGGREGATE__INTERVAL", "1s")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if output {
        cmd.args(["--output", nats.url()]);
    }
    let p = Proc::spawn(&mut cmd);
    let t0 = Instant::now();
    while http_get(addr, "/health").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "aggregate /health");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Events tapbus-aggregate has counted (every event lands in `dnstap_messages_total`).
fn counted(addr: &str) -> u64 {
    metric(
        &http_get(addr, "/metrics").unwrap_or_default(),
        "dnstap_messages_total",
    ) as u64
}

fn wait_counted(addr: &str, total: u64, p: &mut Proc) -> bool {
    let t0 = Instant::now();
    while counted(addr) < total && t0.elapsed() < LIMIT && p.is_running() {
        std::thread::sleep(Duration::from_millis(10));
    }
    counted(addr) == total
}

fn drain(bins: &Bins, copies: usize, ticks: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let total = fill_jetstream(&bins.broker, nats.url(), BULK, copies);
    let addr = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let mut agg = aggregate(bins, &nats, &addr, false);
    let ok = wait_counted(&addr, total, &mut agg);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(agg.pid(), ticks);
    let got = counted(&addr);
    let _ = agg.terminate();
    let rate = got as f64 / secs;
    let us = cpu * 1e6 / got.max(1) as f64;
    println!(
        "drain: tapbus-aggregate counted {got}/{total} events in {secs:.2} s = {rate:.0} events/s; \
         CPU {cpu:.2} s = {us:.2} µs/event"
    );
    println!(
        "RESULT {{\"run\":\"drain\",\"events\":{got},\"expected\":{total},\"seconds\":{secs:.3},\
         \"events_per_s\":{rate:.0},\"aggregate_cpu_s\":{cpu:.3},\"aggregate_us_per_event\":{us:.3}}}"
    );
    assert!(ok, "aggregate counted {got} of {total}");
}

fn prom_total(prom: &Prometheus) -> u64 {
    let answer = prom
        .query("sum(dnstap_messages_total{instance=\"bench\"})")
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn live(bins: &Bins, copies: usize, ticks: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    // The stream exists once the broker published a first (small) capture.
    let first = "bind-resolver.fstrm";
    let mut total = fill_jetstream(&bins.broker, nats.url(), first, 1);
    let prom = Prometheus::start();
    let mimir_addr = format!("127.0.0.1:{}", free_port());
    let mut mimir = Proc::spawn(
        Command::new(&bins.mimir)
            .args([
                "--input",
                &format!("{}/tapbus.metrics.>", nats.url()),
                "--url",
                &prom.write_url(),
                "--metrics-listen",
                &mimir_addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut agg = aggregate(bins, &nats, &addr, true);
    assert!(wait_counted(&addr, total, &mut agg), "the first capture");
    let agg_cpu0 = cpu_secs(agg.pid(), ticks);
    let mimir_cpu0 = cpu_secs(mimir.pid(), ticks);
    let metrics0 = http_get(&mimir_addr, "/metrics").unwrap_or_default();

    let t0 = Instant::now();
    let broker_t0 = Instant::now();
    total += fill_jetstream(&bins.broker, nats.url(), BULK, copies);
    let broker_secs = broker_t0.elapsed().as_secs_f64();
    let ok = wait_counted(&addr, total, &mut agg);
    let secs = t0.elapsed().as_secs_f64();
    let agg_cpu = cpu_secs(agg.pid(), ticks) - agg_cpu0;
    let got = counted(&addr);
    // Prometheus shows the last batch within a few intervals: mimir kept up.
    let p0 = Instant::now();
    while prom_total(&prom) < total && p0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let in_prom = prom_total(&prom);
    let prom_lag = p0.elapsed().as_secs_f64();
    let mimir_cpu = cpu_secs(mimir.pid(), ticks) - mimir_cpu0;
    let metrics1 = http_get(&mimir_addr, "/metrics").unwrap_or_default();
    let requests = metric(&metrics1, "tapbus_mimir_requests_total")
        - metric(&metrics0, "tapbus_mimir_requests_total");
    let samples = metric(&metrics1, "tapbus_mimir_samples_total")
        - metric(&metrics0, "tapbus_mimir_samples_total");
    let _ = agg.terminate();
    let _ = mimir.terminate();
    let events = got - (total - (copies * testdata::expected_count(BULK)) as u64);
    let offered = events as f64 / broker_secs;
    let rate = events as f64 / secs;
    let us = agg_cpu * 1e6 / events.max(1) as f64;
    let mimir_ms = mimir_cpu * 1e3 / requests.max(1.0);
    println!(
        "live: broker offered {events} events in {broker_secs:.2} s = {offered:.0} events/s; \
         tapbus-aggregate counted them all {secs:.2} s after the broker started = {rate:.0} events/s, \
         CPU {agg_cpu:.2} s = {us:.2} µs/event; Prometheus had all {in_prom} {prom_lag:.1} s later; \
         tapbus-mimir {requests:.0} writes, {samples:.0} samples, CPU {mimir_cpu:.3} s = {mimir_ms:.2} ms/write"
    );
    println!(
        "RESULT {{\"run\":\"live\",\"events\":{events},\"broker_seconds\":{broker_secs:.3},\
         \"offered_per_s\":{offered:.0},\"seconds\":{secs:.3},\"events_per_s\":{rate:.0},\
         \"aggregate_cpu_s\":{agg_cpu:.3},\"aggregate_us_per_event\":{us:.3},\"prometheus_total\":{in_prom},\
         \"expected\":{total},\"mimir_writes\":{requests:.0},\"mimir_samples\":{samples:.0},\
         \"mimir_cpu_s\":{mimir_cpu:.3}}}"
    );
    assert!(ok, "aggregate counted {got} of {total}");
    assert_eq!(in_prom, total, "Prometheus has every event");
}

/// Core NATS (at most once, no acks): the broker publishes the copies at full speed while
/// tapbus-aggregate reads `dnstap.>`; what the subscription could not take in time is
/// dropped by the client (slow consumer) and shows as events not counted.
fn core(bins: &Bins, copies: usize, ticks: f64) {
    let nats = Nats::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let input = format!("{}/dnstap.>", nats.url());
    let mut agg = aggregate_from(bins, &nats, &input, &addr, false);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let replay = replay_core(&bins.broker, nats.url(), BULK, copies);
    let (published, broker_secs) = (replay.published, replay.seconds);
    let total = (copies * testdata::expected_count(BULK)) as u64;
    // Quiet for 1 s: everything that will arrive has.
    let mut got = counted(&addr);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = counted(&addr);
        if now == got {
            break;
        }
        got = now;
    }
    let secs = t0.elapsed().as_secs_f64() - 1.0;
    let cpu = cpu_secs(agg.pid(), ticks);
    let _ = agg.terminate();
    let offered = total as f64 / broker_secs;
    let us = cpu * 1e6 / got.max(1) as f64;
    let lost = total.saturating_sub(got);
    println!(
        "core: broker offered {total} events in {broker_secs:.2} s = {offered:.0} events/s \
         (last metrics scrape: {published:.0} confirmed); tapbus-aggregate counted {got} \
         ({lost} not delivered to it) in {secs:.2} s; CPU {cpu:.2} s = {us:.2} µs/event"
    );
    println!(
        "RESULT {{\"run\":\"core\",\"events\":{got},\"expected\":{total},\"broker_seconds\":{broker_secs:.3},\
         \"offered_per_s\":{offered:.0},\"lost\":{lost},\"aggregate_cpu_s\":{cpu:.3},\"aggregate_us_per_event\":{us:.3}}}"
    );
}

/// NATS core at a steady rate: `fstrm_blast` writes `AGG_BENCH_COUNT` frames (default
/// 1,000,000, the bulk capture cycled) at `AGG_BENCH_RATE` frames/s (default 200,000)
/// into the broker's unix socket; the broker publishes to NATS core and tapbus-aggregate
/// reads `dnstap.>`. Zero loss: aggregate counts every frame.
fn paced(bins: &Bins, ticks: f64) {
    let count = env_u64("AGG_BENCH_COUNT", 1_000_000);
    let rate = env_u64("AGG_BENCH_RATE", 200_000);
    let nats = Nats::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let input = format!("{}/dnstap.>", nats.url());
    let mut agg = aggregate_from(bins, &nats, &input, &addr, false);
    let cpu0 = cpu_secs(agg.pid(), ticks);
    let nats0 = cpu_secs(nats.pid(), ticks);
    let p = Paced::run(&bins.broker, nats.url(), BULK, count, rate, || true);
    // Counted once no event has arrived for 1 s (or all have).
    let (mut got, mut last) = (counted(&addr), p.started.elapsed());
    while got < count && p.started.elapsed() - last < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
        let now = counted(&addr);
        if now != got {
            (got, last) = (now, p.started.elapsed());
        }
    }
    let (cpu, nats_cpu) = (
        cpu_secs(agg.pid(), ticks) - cpu0,
        cpu_secs(nats.pid(), ticks) - nats0,
    );
    let blast = p.seconds;
    let replay = p.stop();
    let _ = agg.terminate();
    let lost = count.saturating_sub(got);
    let us = cpu * 1e6 / got.max(1) as f64;
    println!(
        "paced: {count} frames written at {:.0}/s; the broker published {:.0} ({:.2} µs CPU/event); \
         tapbus-aggregate counted {got} ({lost} lost), the last {:.2} s after the last frame; \
         CPU {cpu:.2} s = {us:.2} µs/event; nats-server {:.2} µs/event",
        count as f64 / blast,
        replay.published,
        replay.broker_cpu * 1e6 / count.max(1) as f64,
        last.as_secs_f64() - blast,
        nats_cpu * 1e6 / count.max(1) as f64,
    );
    println!(
        "RESULT {{\"run\":\"paced\",\"events\":{got},\"expected\":{count},\"rate\":{rate},\
         \"offered_per_s\":{:.0},\"lost\":{lost},\"aggregate_cpu_s\":{cpu:.3},\"aggregate_us_per_event\":{us:.3}}}",
        count as f64 / blast
    );
}

fn main() {
    let copies = env_u64("AGG_BENCH_COPIES", 3) as usize;
    let aggregate = PathBuf::from(env!("CARGO_BIN_EXE_tapbus-aggregate"));
    let sibling = |name: &str| -> PathBuf {
        let p = aggregate.with_file_name(name);
        assert!(
            Path::new(&p).exists(),
            "{} missing: cargo build --release -p {name} first",
            p.display()
        );
        p
    };
    let bins = Bins {
        broker: sibling("tapbus-broker"),
        mimir: sibling("tapbus-mimir"),
        aggregate: aggregate.clone(),
    };
    let ticks = clock_ticks();
    let which = std::env::args()
        .skip(1)
        .find(|a| ["drain", "live", "core", "paced"].contains(&a.as_str()));
    let run = |name: &str| which.is_none() || which.as_deref() == Some(name);
    if run("drain") {
        drain(&bins, copies, ticks);
    }
    if run("live") {
        live(&bins, copies, ticks);
    }
    if run("core") {
        core(&bins, copies, ticks);
    }
    if run("paced") {
        paced(&bins, ticks);
    }
}
