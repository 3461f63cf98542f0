//! The consumer runtime's own cost per message, apart from any stage, sink or bus:
//!
//! - `handled`: the exactly-once record ([`Handled`]): `contains` then `insert` for each
//!   stream sequence, in order (one process on a durable), and with the sequences of one
//!   durable shared by two processes (this one sees every other run of `run` sequences:
//!   runs of 1 are the worst case, one range per message; runs of 1024 are what two pull
//!   consumers with the default batch take); the floor is reported every 10,000 sequences
//!   and trails by 10,000, as the lag poll does.
//! - `held`: [`Held::hold`] of 20,000 messages (tokens of 1,024 messages, with a stream
//!   sequence each), then `release_below` per batch or all at once.
//! - `drive`: the whole loop ([`runtime::drive`]) fed 200,000 in-memory deliveries
//!   (`tapbus_bus::subscribe::memory`, made before the clock starts) through a channel of
//!   1,024 by a reader task, as the binaries' readers do, on the binaries' two-worker
//!   runtime. The stage holds every message and flushes a batch every 1,024 (or acks
//!   each at once); the sink writes at once. Acks go to the in-memory log (a mutex and a
//!   push per ack, where a JetStream ack publishes a few dozen bytes). Criterion's time is
//!   wall time; the CPU of the whole process per message (both workers) is printed once
//!   per variant (`CPU ...`).
//!
//! ```sh
//! cargo bench -p tapbus-consumer --bench runtime -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tapbus_bus::subscribe::memory::AckLog;
use tapbus_bus::subscribe::{AckHandle, Delivery};
use tapbus_consumer::runtime::{Input, drive};
use tapbus_consumer::state::{Handled, Held};
use tapbus_consumer::{Flush, Flushed, Msg, NoSink, Options, Own, Stage, Verdict};
use tokio::sync::mpsc;

/// Sequences per `handled` iteration.
const SEQS: u64 = 100_000;

/// This process's sequences when two processes share a durable and take alternate runs
/// of `run` (run 0: all of them, in order).
fn sequences(run: u64) -> Vec<u64> {
    if run == 0 {
        return (1..=SEQS).collect();
    }
    (1..=2 * SEQS)
        .filter(|s| ((s - 1) / run).is_multiple_of(2))
        .collect()
}

fn handled(c: &mut Criterion) {
    let mut g = c.benchmark_group("handled");
    g.throughput(Throughput::Elements(SEQS));
    for (name, run) in [
        ("in order", 0),
        ("two processes, runs of 1", 1),
        ("two processes, runs of 1024", 1024),
    ] {
        let seqs = sequences(run);
        g.bench_function(BenchmarkId::new("contains+insert", name), |b| {
            b.iter(|| {
                let mut h = Handled::new(65_536);
                let mut dup = 0u64;
                for (n, &s) in seqs.iter().enumerate() {
                    if h.contains(s) {
                        dup += 1;
                    } else {
                        h.insert(s);
                    }
                    if n % 10_000 == 9_999 {
                        h.floor(s.saturating_sub(10_000));
                    }
                }
                black_box((dup, h.ranges()))
            });
        });
        // How many ranges the record keeps in each case (at the end, before pruning).
        let mut h = Handled::new(65_536);
        for &s in &seqs {
            h.insert(s);
        }
        eprintln!(
            "handled/{name}: {} ranges for {} sequences (no floor), {} evicted",
            h.ranges(),
            seqs.len(),
            h.evicted()
        );
    }
    g.finish();
}

/// Holds per `held` iteration.
const HOLDS: u64 = 20_000;

fn held(c: &mut Criterion) {
    // What one held message costs inline (its ack handle's heap part, such as a JetStream
    // reply subject, and the sequence index come on top).
    eprintln!(
        "held: size_of AckHandle {} bytes, Entry<AckHandle> {} bytes",
        std::mem::size_of::<AckHandle>(),
        std::mem::size_of::<tapbus_consumer::state::Entry<AckHandle>>()
    );
    let mut g = c.benchmark_group("held");
    g.throughput(Throughput::Elements(HOLDS));
    g.bench_function("hold 20k + release_below per batch of 1024", |b| {
        b.iter(|| {
            let mut h: Held<AckHandle> = Held::default();
            let mut released = 0usize;
            for s in 0..HOLDS {
                let token = s / 1024;
                h.hold(token, AckHandle::none(), 0, Some(s + 1));
                if s % 1024 == 1023 {
                    released += h.release_below(token + 1).len();
                }
            }
            released += h.release_below(u64::MAX).len();
            black_box(released)
        });
    });
    g.bench_function("hold 20k + one release_below", |b| {
        b.iter(|| {
            let mut h: Held<AckHandle> = Held::default();
            for s in 0..HOLDS {
                h.hold(s / 1024, AckHandle::none(), 0, Some(s + 1));
            }
            black_box(h.release_below(u64::MAX).len())
        });
    });
    g.bench_function("hold 20k without sequence + one release_below", |b| {
        b.iter(|| {
            let mut h: Held<AckHandle> = Held::default();
            for s in 0..HOLDS {
                h.hold(s / 1024, AckHandle::none(), 0, None);
            }
            black_box(h.release_below(u64::MAX).len())
        });
    });
    g.finish();
}

/// Holds every message, a batch per `every` messages (or acks each at once).
struct Trivial {
    every: usize,
    hold: bool,
    unflushed: usize,
    token: u64,
    epoch: tokio::time::Instant,
}

impl Stage for Trivial {
    type Batch = usize;

    fn push(&mut self, msg: Msg<'_>, _now: tokio::time::Instant) -> Verdict {
        black_box(msg.payload.len());
        if !self.hold {
            return Verdict::Ack;
        }
        self.unflushed += 1;
        Verdict::Hold(self.token)
    }

    fn due(&self) -> Option<tokio::time::Instant> {
        (self.unflushed >= self.every).then_some(self.epoch)
    }

    fn flush(&mut self, _now: tokio::time::Instant, _why: Flush) -> Option<Flushed<usize>> {
        if self.unflushed == 0 {
            return None;
        }
        let f = Flushed {
            batch: self.unflushed,
            covers: self.token + 1,
        };
        self.token += 1;
        self.unflushed = 0;
        Some(f)
    }
}

/// Messages per `drive` iteration.
const MSGS: u64 = 200_000;

/// A JSON event's size as the broker publishes them (914 bytes on average).
const PAYLOAD: usize = 914;

/// `MSGS` in-memory deliveries (and the log their acks go to).
fn deliveries(seq: bool) -> (AckLog, Vec<Delivery>) {
    let log = AckLog::default();
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let ds = (0..MSGS)
        .map(|i| log.delivery("dnstap.bench", payload.clone(), i, seq.then_some(i + 1), 1))
        .collect();
    (log, ds)
}

/// One run of the loop over `ds`; the wall time from the first send to the loop's end
/// (every message acked) and the process's CPU time over it.
async fn one_drive(hold: bool, every: usize, ds: Vec<Delivery>) -> (Duration, f64) {
    let mut opts = Options::new("bench", "bench");
    opts.max_pending = 200_000;
    let own = Own::new();
    let (tx, rx) = mpsc::channel(1024);
    let (_ftx, frx) = mpsc::channel(16);
    let stage = Trivial {
        every,
        hold,
        unflushed: 0,
        token: 0,
        epoch: tokio::time::Instant::now(),
    };
    let n = ds.len() as u64;
    let c0 = self_cpu();
    let t0 = Instant::now();
    let reader = tokio::spawn(async move {
        for d in ds {
            if tx.send(Input::Delivery(0, d)).await.is_err() {
                return;
            }
        }
    });
    // Ends when the reader's channel closes ("every input ended"), once everything held
    // was written and acked.
    let _ = drive(
        &opts,
        &own,
        rx,
        frx,
        stage,
        NoSink,
        std::future::pending(),
        Vec::new(),
    )
    .await;
    let _ = reader.await;
    let t = t0.elapsed();
    let cpu = self_cpu() - c0;
    assert_eq!(own.acked.get(), n, "every message acked");
    (t, cpu)
}

/// utime + stime of this process, in seconds.
fn self_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // CLK_TCK is 100 on Linux.
    (get(11) + get(12)) / 100.0
}

fn drive_loop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("drive");
    g.throughput(Throughput::Elements(MSGS));
    g.sample_size(10);
    for (name, hold, seq, every) in [
        ("hold, flush every 1024, jetstream seq", true, true, 1024),
        ("hold, flush every 1024, no seq (core)", true, false, 1024),
        ("hold, flush every 16384, jetstream seq", true, true, 16_384),
        ("ack at once, jetstream seq", false, true, 1024),
    ] {
        // CPU per message over 10 runs (2,000,000 messages), both workers.
        let (mut cpu, mut wall) = (0.0, Duration::ZERO);
        for _ in 0..10 {
            let (_log, ds) = deliveries(seq);
            let (t, c) = rt.block_on(one_drive(hold, every, ds));
            wall += t;
            cpu += c;
        }
        let n = (10 * MSGS) as f64;
        eprintln!(
            "CPU drive/{name}: {:.0} ns CPU/message (process, both workers), \
             {:.0} ns wall/message, {:.2} M messages/s",
            cpu * 1e9 / n,
            wall.as_secs_f64() * 1e9 / n,
            n / wall.as_secs_f64() / 1e6
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let (_log, ds) = deliveries(seq);
                    t += rt.block_on(one_drive(hold, every, ds)).0;
                }
                t
            });
        });
    }
    g.finish();
}

criterion_group!(benches, handled, held, drive_loop);
criterion_main!(benches);
