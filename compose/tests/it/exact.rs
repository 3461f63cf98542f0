//! Exactly-once effects through bus restarts and any start order (issue 17, "Tests (real
//! servers, in the suite)"), with the real processes of the pipeline:
//!
//! ```text
//! fstrm_blast --paced--> tapbus-broker --> nats-server (JetStream, stream DNSTAP)
//!     --> tapbus-reduce     (durable reduce)    --> stream REDUCED
//!     --> tapbus-aggregate  (durable aggregate) --> tapbus.metrics.* (core NATS)
//!             --> tapbus-mimir --> Prometheus (remote-write receiver)
//!     --> tapbus-loki       (durable loki)      --> the test suite's Loki receiver
//! ```
//!
//! The events are copies of the bulk capture moved on in event time
//! ([`testdata::distinct_copies`]): no two alike, so Loki (which keeps one of two identical
//! lines) and reduce's record ids (one per window and key) cannot hide a repeat.
//!
//! After each disturbance the stores must agree with the broker and the stream
//! ([`Pipeline::assert_exact`]):
//! - the broker's books balance: published + dropped == events;
//! - the stream DNSTAP holds exactly what the broker counted as published;
//! - Prometheus `sum(dnstap_messages_total)` (aggregate's counters, written by mimir) ==
//!   the stream;
//! - the `count`s of reduce's `client` records in REDUCED == the stream's CLIENT_RESPONSE
//!   events;
//! - Loki holds every event of the stream as a line, each exactly once, and received each
//!   exactly once (the receiver keeps one of two identical entries, as Loki does, so its
//!   count of entries received is what shows a line pushed twice);
//! - nothing is left on any durable (`num_pending == 0`, `num_ack_pending == 0`).
//!
//! The scenarios run one at a time ([`ONE_AT_A_TIME`]) and print what they saw on lines
//! starting with `RESULT exact` (`cargo test ... -- --nocapture`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tapbus_testsupport::bench::{Paced, PacedRun, Replay};
use tapbus_testsupport::jetstream::{
    consumer_backlog, dnstap_durable, stream_info_messages, stream_messages,
};
use tapbus_testsupport::loki::{Limits, LokiReceiver};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom::{self, Scrape};
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::{free_port, http_get_status, pause, testdata};

use crate::binaries;

/// The scenarios run one after the other: each runs nats-server, the broker, four
/// consumers and Prometheus at tens of thousands of events/s; side by side on a small
/// machine they would mostly measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const CAPTURE: &str = "bulk-100k.fstrm";
/// What every JetStream input of the scenarios sets: a message whose ack the server lost
/// (a restart) comes again within seconds, not after the default 30 s.
const ACK_WAIT: &str = "5s";
/// The runtime's default drain deadline (reduce, aggregate, mimir) and tapbus-loki's
/// `drain_timeout` default.
const DRAIN: Duration = Duration::from_secs(20);
const LOKI_DRAIN: Duration = Duration::from_secs(10);
/// What a stopping process may take beyond its deadline (the runtime's own end, exit).
const EXIT_MARGIN: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reduce,
    Aggregate,
    Mimir,
    Loki,
}

const KINDS: [Kind; 4] = [Kind::Reduce, Kind::Aggregate, Kind::Mimir, Kind::Loki];

impl Kind {
    /// The `consumer` label of `tapbus_consumer_*`.
    fn name(self) -> &'static str {
        match self {
            Kind::Reduce => "reduce",
            Kind::Aggregate => "aggregate",
            Kind::Mimir => "mimir",
            Kind::Loki => "loki",
        }
    }

    fn bin(self) -> PathBuf {
        binaries()[&format!("tapbus-{}", self.name())].clone()
    }

    /// The durable on DNSTAP (mimir reads aggregate's batches on core NATS).
    fn durable(self) -> Option<&'static str> {
        match self {
            Kind::Mimir => None,
            k => Some(k.name()),
        }
    }

    fn drain(self) -> Duration {
        match self {
            Kind::Loki => LOKI_DRAIN,
            _ => DRAIN,
        }
    }
}

/// One running consumer process.
struct Consumer {
    kind: Kind,
    proc: Proc,
    addr: String,
    log: PathBuf,
}

impl Consumer {
    fn metrics(&self) -> Scrape {
        prom::scrape(&self.addr)
    }

    /// This process's own `tapbus_consumer_*` value.
    fn own(&self, name: &str) -> Option<f64> {
        prom::value(&self.metrics(), name, &[("consumer", self.kind.name())])
    }

    fn health(&self) -> Option<u16> {
        http_get_status(&self.addr, "/health").map(|(s, _)| s)
    }

    fn log_text(&self) -> String {
        log_text(&self.log)
    }
}

/// A log file's text without the terminal colours tracing writes (`ESC [ ... m`).
fn log_text(p: &std::path::Path) -> String {
    let raw = std::fs::read_to_string(p).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// nats-server (on a fixed port and store, so it can be killed and started again), the
/// stores, and the four consumers.
struct Pipeline {
    dir: tempfile::TempDir,
    port: u16,
    store: PathBuf,
    nats: Option<Nats>,
    prom: Prometheus,
    loki: LokiReceiver,
    consumers: Vec<Consumer>,
    /// Processes started so far (aggregate's `instance`, log names).
    starts: u32,
}

impl Pipeline {
    /// Prometheus, the Loki receiver and nats-server (`nats`: now, else later with
    /// [`Pipeline::start_nats`]); no consumer yet.
    fn new(nats: bool) -> Pipeline {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("js");
        std::fs::create_dir_all(&store).expect("store dir");
        let mut p = Pipeline {
            port: free_port(),
            store,
            nats: None,
            prom: Prometheus::start(),
            // Old captures (any age), several copies per stream, unlimited rate.
            loki: LokiReceiver::start_with(Limits {
                reject_old_samples: false,
                max_chunk_age: Duration::from_secs(100 * 365 * 86_400),
                ingestion_rate_bytes: 1e12,
                ingestion_burst_bytes: 1e12,
                ..Limits::default()
            }),
            consumers: Vec::new(),
            starts: 0,
            dir,
        };
        if nats {
            p.start_nats();
        }
        p
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start_nats(&mut self) {
        assert!(self.nats.is_none(), "nats-server runs");
        self.nats = Some(Nats::start_jetstream_on(self.port, &self.store));
    }

    /// SIGKILL (a crash: what the server held in memory only is lost).
    fn kill_nats(&mut self) {
        if let Some(n) = self.nats.take() {
            n.kill();
        }
    }

    /// The input URL of `kind`.
    fn input(&self, kind: Kind) -> String {
        match kind.durable() {
            Some(d) => format!("{}&ack_wait={ACK_WAIT}", dnstap_durable(&self.url(), d)),
            None => format!("{}/tapbus.metrics.>", self.url()),
        }
    }

    /// Starts `kind` (not waiting for it).
    fn spawn(&mut self, kind: Kind) -> Consumer {
        self.starts += 1;
        let n = self.starts;
        let addr = format!("127.0.0.1:{}", free_port());
        let log = self.dir.path().join(format!("{}-{n}.log", kind.name()));
        let mut cmd = Command::new(kind.bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("TAPBUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--input", &self.input(kind), "--metrics-listen", &addr])
            .env("TAPBUS_LOG", "info,async_nats=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        match kind {
            Kind::Reduce => {
                cmd.args(["--output", &self.url()])
                    .env("TAPBUS_OUTPUT__JETSTREAM", "true")
                    .env("TAPBUS_OUTPUT__STREAM", "REDUCED")
                    .env("TAPBUS_OUTPUT__STREAM_SUBJECTS", "[\"tapbus.reduced.>\"]")
                    .env("TAPBUS_IDLE_FLUSH", "1s")
                    .env("TAPBUS_REDUCE__WINDOW", "1s")
                    .env("TAPBUS_REDUCE__LATENESS", "1s");
            }
            Kind::Aggregate => {
                // Each process its own instance: a restarted aggregate counts from zero,
                // and under the same instance Prometheus would see a counter reset (which
                // rate() handles and a plain sum does not).
                cmd.args(["--output", &self.url(), "--instance", &format!("exact-{n}")])
                    .env("TAPBUS_AGGREGATE__INTERVAL", "1s");
            }
            Kind::Mimir => {
                cmd.args(["--url", &self.prom.write_url()]);
            }
            Kind::Loki => {
                cmd.args(["--url", &self.loki.push_url()])
                    .env("TAPBUS_BATCH_WAIT", "200ms");
            }
        }
        Consumer {
            kind,
            proc: Proc::spawn(&mut cmd),
            addr,
            log,
        }
    }

    /// Once the broker listens (it makes the stream DNSTAP when it connects): true when
    /// every consumer answers 200 on `/health` (for [`Paced::start`], on its thread).
    fn ready(&self) -> impl FnMut() -> bool + Send + 'static {
        let addrs: Vec<String> = self.consumers.iter().map(|c| c.addr.clone()).collect();
        move || {
            addrs
                .iter()
                .all(|a| http_get_status(a, "/health").is_some_and(|(s, _)| s == 200))
        }
    }

    /// Starts every consumer.
    fn spawn_all(&mut self) {
        for k in KINDS {
            let c = self.spawn(k);
            self.consumers.push(c);
        }
    }

    fn consumer(&mut self, kind: Kind) -> &mut Consumer {
        self.consumers
            .iter_mut()
            .find(|c| c.kind == kind)
            .expect("consumer")
    }

    /// Waits until every consumer answers 200 on `/health` (all inputs subscribed).
    fn wait_healthy(&mut self, secs: u64) {
        self.wait("every consumer healthy", secs, |p| {
            p.consumers.iter().all(|c| c.health() == Some(200))
        });
    }

    /// Polls `f` every 100 ms for up to `secs`; fails with every process's log tail. A
    /// consumer that exits meanwhile fails at once.
    fn wait(&mut self, what: &str, secs: u64, mut f: impl FnMut(&mut Pipeline) -> bool) {
        let t0 = Instant::now();
        loop {
            if f(self) {
                return;
            }
            for c in &mut self.consumers {
                if let Some(st) = c.proc.try_wait() {
                    panic!(
                        "tapbus-{} exited ({st}) before {what}\n{}",
                        c.kind.name(),
                        c.log_text()
                    );
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs}s\n{}",
                self.describe()
            );
            pause(Duration::from_millis(100));
        }
    }

    /// Every durable's backlog, every consumer's counters and log tail.
    fn describe(&self) -> String {
        let mut s = String::new();
        for c in &self.consumers {
            if let Some(d) = c.kind.durable() {
                s += &format!(
                    "durable {d}: {:?}\n",
                    consumer_backlog(&self.url(), "DNSTAP", d)
                );
            }
        }
        for c in &self.consumers {
            let m = c.metrics();
            let own: Vec<String> = m
                .series
                .iter()
                .filter(|x| {
                    x.name.starts_with("tapbus_") && !x.name.ends_with("_bucket") && x.value != 0.0
                })
                .map(|x| format!("{}={}", x.name, x.value))
                .collect();
            let log = c.log_text();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            s += &format!(
                "--- tapbus-{} ({}): {}\n{}\n",
                c.kind.name(),
                c.log.display(),
                own.join(" "),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        s
    }

    /// `count` events ([`testdata::distinct_copies`] of the bulk capture) written at
    /// `rate` into a broker publishing to the stream DNSTAP (which the broker makes).
    fn replay(&self, count: u64, rate: u64) -> PacedRun {
        let file = self.dir.path().join("events.fstrm");
        let per_copy = testdata::expected_count(CAPTURE) as u64;
        let copies = count.div_ceil(per_copy);
        if !file.exists() {
            assert!(testdata::distinct_copies(CAPTURE, copies, &file) >= count);
        }
        let mut run = PacedRun::new(&binaries()["tapbus-broker"], &file, count, rate);
        run.ready_timeout = Duration::from_secs(60);
        run.env = vec![
            ("TAPBUS_OUTPUTS__BUS__URL".into(), self.url()),
            ("TAPBUS_OUTPUTS__BUS__JETSTREAM".into(), "true".into()),
            ("TAPBUS_LOG".into(), "info,async_nats=warn".into()),
        ];
        run.log = Some(self.broker_log());
        run
    }

    fn broker_log(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Waits until the broker has settled every event (published or dropped), then stops
    /// it.
    fn finish(&mut self, paced: Paced, count: u64) -> Replay {
        let settled = |p: &Paced| {
            let m = p.metrics();
            prom::sum(&m, "tapbus_published_total", &[])
                + prom::sum(&m, "tapbus_dropped_total", &[])
        };
        self.wait("the broker settled every event", 60, |_| {
            settled(&paced) >= count as f64
        });
        let dropped = prom::sum_by(&paced.metrics(), "tapbus_dropped_total", &[], "reason");
        println!(
            "RESULT exact broker: dropped by reason {:?}",
            dropped
                .iter()
                .filter(|(_, n)| **n > 0.0)
                .collect::<Vec<_>>()
        );
        paced.stop()
    }

    /// The stores agree with the broker and the stream (see the module docs). Returns
    /// each running consumer's `tapbus_consumer_duplicates_total` and
    /// `tapbus_consumer_redelivered_total` (not a bound on the duplicates: a server that
    /// lost a consumer's state in a crash delivers again as for the first time).
    fn assert_exact(&mut self, replay: Replay, count: u64) -> BTreeMap<&'static str, (f64, f64)> {
        let url = self.url();
        assert_eq!(
            replay.events, count as f64,
            "the broker's events: {replay:?}"
        );
        assert_eq!(
            replay.published + replay.dropped,
            replay.events,
            "the broker's books: {replay:?}"
        );
        let stored = stream_info_messages(&url, "DNSTAP").expect("stream DNSTAP");
        assert_eq!(
            stored as f64, replay.published,
            "the stream holds what the broker published: {replay:?}"
        );
        assert!(stored > 0, "nothing published: {replay:?}");

        // Nothing left on any durable: every event delivered and acked.
        self.wait("every durable drained", 240, |p| {
            KINDS
                .iter()
                .filter_map(|k| k.durable())
                .all(|d| consumer_backlog(&p.url(), "DNSTAP", d) == Some((0, 0)))
        });

        let msgs = stream_messages(&url, "DNSTAP");
        assert_eq!(msgs.len() as u64, stored);
        let events: Vec<Value> = msgs
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).expect("event JSON"))
            .collect();
        let responses = events
            .iter()
            .filter(|e| e["dnstap"]["operation"] == "CLIENT_RESPONSE")
            .count() as u64;
        assert!(responses > 0);

        // Prometheus, through aggregate and mimir: every batch carries aggregate's whole
        // state, so the sum settles once the last batch after the last event is written.
        let q = "sum(dnstap_messages_total)";
        let t0 = Instant::now();
        loop {
            let seen = prom_value(&self.prom, q);
            if seen == Some(stored as f64) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "Prometheus {q} = {seen:?}, the stream holds {stored}; by instance: {:?}\n{}",
                self.prom
                    .query("sum by (instance) (dnstap_messages_total)")
                    .unwrap_or_default(),
                self.describe()
            );
            pause(Duration::from_millis(200));
        }
        // Still so two batches later (nothing is counted after the durables drained).
        pause(Duration::from_millis(2500));
        assert_eq!(prom_value(&self.prom, q), Some(stored as f64), "{q}");

        // reduce: the client records sum to the client responses (REDUCED is complete once
        // reduce's durable is drained: it acks after the records were stored).
        let records = stream_messages(&url, "REDUCED");
        let mut ids = std::collections::BTreeSet::new();
        let mut client = 0u64;
        for (subject, payload) in &records {
            let r: Value = serde_json::from_slice(payload).expect("record JSON");
            assert!(
                ids.insert(r["id"].as_str().expect("id").to_string()),
                "REDUCED holds a record id twice: {r}"
            );
            if subject == "tapbus.reduced.client" {
                assert_eq!(r["reduction"], "client", "{r}");
                client += r["count"].as_u64().expect("count");
            }
        }
        assert_eq!(
            client, responses,
            "reduce's client records against the client responses of the stream"
        );

        // Loki: every event once (pushed once: the receiver keeps one of two identical
        // entries, so only its count of entries received shows a repeat).
        let mut want: Vec<&[u8]> = msgs.iter().map(|(_, p)| p.as_slice()).collect();
        want.sort_unstable();
        let entries = self.loki.entries();
        let mut got: Vec<&[u8]> = entries.iter().map(|e| e.line.as_bytes()).collect();
        got.sort_unstable();
        let stats = self.loki.stats();
        assert_eq!(
            got.len(),
            want.len(),
            "Loki lines against the stream: {stats:?}"
        );
        assert!(got == want, "Loki lines are not the stream's events");
        assert_eq!(
            (stats.entries_received, stats.deduplicated),
            (stored, 0),
            "every line pushed exactly once: {stats:?}"
        );

        // The consumers' own view: nothing held, the de-duplication exported.
        let mut dupes = BTreeMap::new();
        for c in &self.consumers {
            let m = c.metrics();
            let v = |n: &str| prom::value(&m, n, &[("consumer", c.kind.name())]);
            assert_eq!(v("tapbus_consumer_pending"), Some(0.0), "{}", c.kind.name());
            let d = v("tapbus_consumer_duplicates_total").unwrap_or_else(|| {
                panic!("{}: no tapbus_consumer_duplicates_total", c.kind.name())
            });
            let r = v("tapbus_consumer_redelivered_total").expect("redelivered");
            dupes.insert(c.kind.name(), (d, r));
        }
        dupes
    }
}

/// The one value of an instant query (`None`: no answer or no series).
fn prom_value(p: &Prometheus, q: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(&p.query(q)?).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

/// The `left=N` of the runtime's "drain_timeout passed" warning, if logged.
fn unsettled_logged(log: &str) -> Option<u64> {
    let l = log.lines().find(|l| l.contains("drain_timeout passed"))?;
    let at = l.find("left=")? + "left=".len();
    l[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[test]
fn unsettled_is_read_from_the_drain_warning_with_or_without_colours() {
    let l = "2026-12-07T18:00:00Z  WARN tapbus_consumer::runtime: drain_timeout passed with messages whose output was not confirmed: not acked, the bus delivers them again left=4096";
    assert_eq!(unsettled_logged(&format!("x\n{l}\ny")), Some(4096));
    assert_eq!(unsettled_logged("nothing"), None);
    // As a consumer writes it to a file: with colours.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("x.log");
    std::fs::write(
        &f,
        "\u{1b}[2m2026-12-07T19:07:51.780744Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m drain_timeout passed with messages whose output was not confirmed \u{1b}[3mleft\u{1b}[0m\u{1b}[2m=\u{1b}[0m881\n",
    )
    .expect("write");
    assert_eq!(unsettled_logged(&log_text(&f)), Some(881));
}

/// nats-server is SIGKILLed a third into a paced replay and started again 2 s later on
/// the same port and store, with every consumer running: exact.
#[test]
fn a_nats_server_killed_mid_replay_leaves_every_store_exact() {
    let _one = one_at_a_time();
    const COUNT: u64 = 150_000;
    const RATE: u64 = 15_000;
    let mut p = Pipeline::new(true);
    p.spawn_all();
    let run = p.replay(COUNT, RATE);
    let ready = p.ready();
    let url = p.url();
    let stream = || stream_info_messages(&url, "DNSTAP").unwrap_or(0);
    let (paced, at_kill, recovered) = std::thread::scope(|s| {
        let writer = s.spawn(move || Paced::start(run, ready));
        p.wait("a third of the events in the stream", 60, |_| {
            stream() >= COUNT / 3
        });
        p.kill_nats();
        let at_kill = stream_info_messages(&url, "DNSTAP");
        assert_eq!(at_kill, None, "nats-server is down");
        pause(Duration::from_secs(2));
        let before = Instant::now();
        p.start_nats();
        let listening = before.elapsed();
        let at_start = stream();
        // The broker's JetStream output publishes again (the replay is still running).
        let t0 = Instant::now();
        let mut recovered = None;
        while t0.elapsed() < Duration::from_secs(10) {
            if stream() > at_start {
                recovered = Some(t0.elapsed());
                break;
            }
            pause(Duration::from_millis(20));
        }
        println!(
            "RESULT exact nats-restart: stream held {at_start} at the restart; nats-server listening after {listening:?}; the broker stored again {recovered:?} later"
        );
        let paced = writer.join().expect("the writer thread");
        (paced, at_start, recovered)
    });
    assert!(
        at_kill < COUNT,
        "nats-server was killed mid-replay ({at_kill} of {COUNT} stored)"
    );
    assert!(
        recovered.is_some(),
        "the broker did not store anything in the 10 s after nats-server was back"
    );
    let replay = p.finish(paced, COUNT);
    let dupes = p.assert_exact(replay, COUNT);
    println!(
        "RESULT exact nats-restart: broker {replay:?}; (duplicates, redelivered) per consumer {dupes:?}"
    );
}

/// Each consumer in turn is SIGTERMed while it has a backlog, and started again: it
/// drains (writes what it holds, acks it) and exits 0 within its deadline, the next
/// process goes on from the durable's ack floor: exact.
///
/// SIGTERM repeats nothing. A SIGKILL could repeat what the killed process had taken and
/// not acked, at most the durable's max_ack_pending (4096) messages: counted again by
/// aggregate, reduced again by reduce (records of other ids, so REDUCED keeps both),
/// pushed again by loki (the same lines and timestamps: Loki keeps one); mimir reads core
/// NATS and repeats a batch at most (the same samples at the same timestamps).
#[test]
fn every_consumer_sigtermed_and_restarted_mid_stream_leaves_every_store_exact() {
    let _one = one_at_a_time();
    // Slow enough for the consumers to follow the replay live, long enough for four
    // restarts while it runs.
    const COUNT: u64 = 100_000;
    const RATE: u64 = 8_000;
    let mut p = Pipeline::new(true);
    p.spawn_all();
    let run = p.replay(COUNT, RATE);
    let ready = p.ready();
    let mut restarts = Vec::new();
    let paced = std::thread::scope(|s| {
        let writer = s.spawn(move || Paced::start(run, ready));
        for kind in [Kind::Mimir, Kind::Reduce, Kind::Aggregate, Kind::Loki] {
            // Mid-stream: it has taken some events (mimir: aggregate has, so its batches
            // count them) and the replay goes on.
            let counts = if kind == Kind::Mimir {
                Kind::Aggregate
            } else {
                kind
            };
            p.wait(&format!("{} mid-stream", kind.name()), 60, |p| {
                let taken = p.consumer(counts).own("tapbus_consumer_messages_total");
                taken.unwrap_or(0.0) >= 2000.0 || writer.is_finished()
            });
            assert!(
                !writer.is_finished(),
                "the replay ended before {} was stopped: {restarts:?}",
                kind.name()
            );
            let durable = kind.durable().unwrap_or("aggregate");
            let backlog = consumer_backlog(&p.url(), "DNSTAP", durable);
            let c = p.consumer(kind);
            let t0 = Instant::now();
            let st = c
                .proc
                .terminate_within(kind.drain() + EXIT_MARGIN)
                .unwrap_or_else(|| panic!("{} did not exit on SIGTERM", kind.name()));
            let took = t0.elapsed();
            assert!(st.success(), "{}: {st}\n{}", kind.name(), c.log_text());
            restarts.push(format!(
                "{} stopped in {took:?} ({durable} backlog {backlog:?})",
                kind.name()
            ));
            let fresh = p.spawn(kind);
            *p.consumer(kind) = fresh;
            p.wait_healthy(60);
        }
        writer.join().expect("the writer thread")
    });
    let replay = p.finish(paced, COUNT);
    let dupes = p.assert_exact(replay, COUNT);
    println!(
        "RESULT exact sigterm-restarts: {}; broker {replay:?}; (duplicates, redelivered) per consumer {dupes:?}",
        restarts.join(", ")
    );
}

/// nats-server is SIGKILLed under a running replay and not started again; then every
/// consumer gets SIGTERM at once. Each exits 0 within its drain deadline; reduce and
/// aggregate, whose output is the dead bus, log what they could not settle (the runtime's
/// "drain_timeout passed ... left=N", N their held messages), which the bus delivers
/// again to the next process. (`tapbus_consumer_unsettled_total` counts the same N, but
/// only just before the exit: no scrape can see it.) loki and mimir hold nothing (loki's
/// Loki is up); loki still waits out its deadline for its last acks to reach the bus.
#[test]
fn sigterm_with_the_bus_down_exits_within_the_drain_deadline_and_says_what_is_unsettled() {
    let _one = one_at_a_time();
    const COUNT: u64 = 40_000;
    const RATE: u64 = 15_000;
    let mut p = Pipeline::new(true);
    p.spawn_all();
    let run = p.replay(COUNT, RATE);
    let ready = p.ready();
    let paced = std::thread::scope(|s| {
        let writer = s.spawn(move || Paced::start(run, ready));
        // While reduce and aggregate hold events (their window, their batch).
        p.wait("reduce and aggregate holding events", 60, |p| {
            [Kind::Reduce, Kind::Aggregate].iter().all(|k| {
                p.consumer(*k)
                    .own("tapbus_consumer_pending")
                    .is_some_and(|n| n > 0.0)
            })
        });
        p.kill_nats();
        writer.join().expect("the writer thread")
    });
    // Nothing can be read or confirmed any more: what each holds now stays held. (loki
    // writes to Loki, which is up: it pushes what it holds; its acks fail.)
    let mut held: BTreeMap<&str, f64> = BTreeMap::new();
    let mut last: BTreeMap<&str, f64> = BTreeMap::new();
    let mut since = Instant::now();
    p.wait("the held counts to settle", 30, |p| {
        let now: BTreeMap<&str, f64> = p
            .consumers
            .iter()
            .map(|c| {
                (
                    c.kind.name(),
                    c.own("tapbus_consumer_pending").unwrap_or(-1.0),
                )
            })
            .collect();
        if now != last {
            last = now;
            since = Instant::now();
            return false;
        }
        if since.elapsed() < Duration::from_secs(2) {
            return false;
        }
        held = last.clone();
        true
    });
    for k in [Kind::Reduce, Kind::Aggregate] {
        assert!(held[k.name()] > 0.0, "{} holds nothing: {held:?}", k.name());
    }
    let t0 = Instant::now();
    for c in &mut p.consumers {
        c.proc.signal("TERM");
    }
    // Each one's exit, as soon as it happens.
    let mut exits: Vec<Option<(ExitStatus, Duration)>> = vec![None; p.consumers.len()];
    while exits.iter().any(Option::is_none) && t0.elapsed() < DRAIN + EXIT_MARGIN {
        for (c, e) in p.consumers.iter_mut().zip(exits.iter_mut()) {
            if e.is_none() {
                *e = c.proc.try_wait().map(|st| (st, t0.elapsed()));
            }
        }
        pause(Duration::from_millis(10));
    }
    let mut report = Vec::new();
    for (c, e) in p.consumers.iter().zip(exits) {
        let log = c.log_text();
        let (st, took) = e.unwrap_or_else(|| {
            panic!(
                "tapbus-{} still runs {:?} after SIGTERM with its bus down (deadline {:?})\n{log}",
                c.kind.name(),
                t0.elapsed(),
                c.kind.drain()
            )
        });
        assert!(
            took <= c.kind.drain() + EXIT_MARGIN,
            "tapbus-{} exited {took:?} after SIGTERM (deadline {:?})\n{log}",
            c.kind.name(),
            c.kind.drain()
        );
        assert!(st.success(), "tapbus-{}: {st}\n{log}", c.kind.name());
        let left = unsettled_logged(&log);
        let h = held[c.kind.name()] as u64;
        match c.kind {
            Kind::Reduce | Kind::Aggregate => {
                assert_eq!(
                    left,
                    Some(h),
                    "tapbus-{} logs what it held unsettled\n{log}",
                    c.kind.name()
                );
                assert!(
                    took >= c.kind.drain() - Duration::from_secs(1),
                    "tapbus-{} gave up before its deadline ({took:?})",
                    c.kind.name()
                );
            }
            // Nothing of theirs waits for the bus: whatever they still hold is logged.
            Kind::Mimir | Kind::Loki => assert_eq!(left.unwrap_or(0), h, "{log}"),
        }
        report.push(format!(
            "{} exited {st} after {took:?}, held {h}, logged unsettled {left:?}",
            c.kind.name()
        ));
    }
    println!("RESULT exact bus-down-sigterm: {}", report.join("; "));
    drop(paced);
}

/// Every consumer and the broker start before nats-server, so before the stream DNSTAP
/// exists: each says it waits (once per thing it waits for) and answers 503 on
/// `/health`; nats-server starts, the broker makes the stream, everyone goes on by
/// themselves: exact.
#[test]
fn started_before_nats_server_and_the_stream_everything_waits_then_is_exact() {
    let _one = one_at_a_time();
    const COUNT: u64 = 50_000;
    const RATE: u64 = 15_000;
    let mut p = Pipeline::new(false);
    p.spawn_all();
    let run = p.replay(COUNT, RATE);
    let broker_log = p.broker_log();
    let mut waited: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let paced = {
        let p = &mut p;
        let waited = &mut waited;
        Paced::start(run, move || {
            if p.nats.is_none() {
                // The broker listens: everything runs, nothing has a bus.
                let mut all = true;
                for c in &mut p.consumers {
                    assert!(c.proc.is_running(), "{}: {}", c.kind.name(), c.log_text());
                    let waiting: Vec<String> = c
                        .log_text()
                        .lines()
                        .filter(|l| l.contains("waiting for"))
                        .map(str::to_owned)
                        .collect();
                    all &= !waiting.is_empty();
                    assert_eq!(
                        c.health(),
                        Some(503),
                        "{} before nats-server",
                        c.kind.name()
                    );
                }
                let broker_waits = log_text(&broker_log).contains("waiting for");
                if !(all && broker_waits) {
                    return false;
                }
                // A while longer: the waits are not logged again.
                pause(Duration::from_secs(3));
                p.start_nats();
                return false;
            }
            let url = p.url();
            let up = p.consumers.iter().all(|c| c.health() == Some(200))
                && stream_info_messages(&url, "DNSTAP").is_some();
            if up {
                for c in &p.consumers {
                    let lines: Vec<String> = c
                        .log_text()
                        .lines()
                        .filter(|l| l.contains("waiting for"))
                        .map(str::to_owned)
                        .collect();
                    waited.insert(c.kind.name(), lines);
                }
                let b: Vec<String> = log_text(&broker_log)
                    .lines()
                    .filter(|l| l.contains("waiting for"))
                    .map(str::to_owned)
                    .collect();
                waited.insert("broker", b);
            }
            up
        })
    };
    for (who, lines) in &waited {
        assert!(!lines.is_empty(), "{who} logged no waiting line");
        // One line per thing waited for (each connection to the bus, the stream), never
        // repeated: the lines differ after "waiting for".
        let what: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.find("waiting for").map(|i| &l[i..]))
            .collect();
        let mut distinct = what.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            what.len(),
            distinct.len(),
            "{who} logged a wait twice:\n{}",
            lines.join("\n")
        );
    }
    println!(
        "RESULT exact start-order: waiting lines {:?}",
        waited
            .iter()
            .map(|(k, v)| (k, v.len()))
            .collect::<BTreeMap<_, _>>()
    );
    let replay = p.finish(paced, COUNT);
    let dupes = p.assert_exact(replay, COUNT);
    println!(
        "RESULT exact start-order: broker {replay:?}; (duplicates, redelivered) per consumer {dupes:?}"
    );
}
