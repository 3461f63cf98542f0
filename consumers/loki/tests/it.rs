//! tapbus-loki end to end against real servers: the broker replays the captures into
//! JetStream (and prints what it published on stdout), tapbus-loki reads a durable consumer
//! and pushes to the Loki receiver of the test suite (`tapbus_testsupport::loki`, which
//! decodes the real push bodies and enforces Loki's rules and texts). Checked: every event
//! arrives exactly once as its line with the configured labels and its event time; Loki's
//! 7-day rule refuses old entries, which are counted and acked, never retried; an outage
//! (connection refused, 5xx, 429 with Retry-After) loses nothing; a partial 400 is counted
//! by reason; two processes share a durable; reduced records get their own labels; a bad
//! configuration exits 2 naming the key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use serde_json::Value;
use tapbus_testsupport::loki::{Limits, LokiReceiver, StoredEntry};
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
use tapbus_testsupport::servers::Nats;
use tapbus_testsupport::{free_port, http_get, testdata};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn loki_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-loki"))
}

fn bin(package: &str) -> PathBuf {
    tapbus_testsupport::sibling_bin(&loki_bin(), package, package)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

/// Limits for replays of old captures: Loki's defaults, but entries of any age and any
/// order accepted (the captures are older than 7 days and several of them may share a
/// stream), and no ingestion rate limit: an unloaded machine replays faster than Loki's
/// default 4 MB/s, and these tests count the 429s they inject themselves.
fn old_captures_ok() -> Limits {
    Limits {
        reject_old_samples: false,
        max_chunk_age: 100 * 365 * DAY,
        ingestion_rate_bytes: 1e12,
        ingestion_burst_bytes: 1e12,
        ..Limits::default()
    }
}

/// The broker replays `capture` into JetStream (stream DNSTAP) and exits; returns the
/// events it published (the bus payloads).
fn replay(nats_url: &str, capture: &str) -> Vec<String> {
    tapbus_testsupport::jetstream::replay_capture(&bin("tapbus-broker"), nats_url, capture)
}

fn js_input(nats: &Nats, durable: &str) -> String {
    tapbus_testsupport::jetstream::dnstap_durable(nats.url(), durable)
}

/// A running tapbus-loki and its metrics address.
struct Loki {
    proc: Proc,
    addr: String,
    log: PathBuf,
}

impl Loki {
    fn metrics(&self) -> String {
        http_get(&self.addr, "/metrics").unwrap_or_default()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts tapbus-loki from `input` to `url` with extra args and environment; waits for
/// its /health.
fn start_loki(
    dir: &Path,
    name: &str,
    input: &str,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Loki {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(loki_bin());
    cmd.args(["--input", input, "--url", url, "--metrics-listen", &addr])
        .args(args)
        .env("TAPBUS_BATCH_WAIT", "200ms")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(&mut cmd);
    let t0 = Instant::now();
    while http_get(&addr, "/health").is_none() {
        assert!(
            proc.is_running() && t0.elapsed() < Duration::from_secs(30),
            "tapbus-loki {name} did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Loki { proc, addr, log }
}

/// The sum of the samples of `name` (exactly that metric, not its `_bucket` etc.) whose
/// labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom::sum(&prom::Scrape::parse(text), name, labels)
}

/// Polls `f` until true; on timeout panics with `what` and the logs of `lokis`.
fn wait(what: &str, timeout: Duration, lokis: &[&Loki], mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            let logs: Vec<String> = lokis
                .iter()
                .map(|l| {
                    let t = l.log();
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(num_pending, num_ack_pending)` of a durable of stream DNSTAP.
fn durable_state(nats: &Nats, durable: &str) -> (u64, usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("DNSTAP").await.expect("stream");
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(durable).await.expect("consumer");
        let i = c.info().await.expect("info");
        (i.num_pending, i.num_ack_pending)
    })
}

/// The labels tapbus-loki must give a raw event under the default configuration.
fn event_labels(ev: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("job".to_string(), "tapbus".to_string());
    m.insert("kind".to_string(), "event".to_string());
    for (label, v) in [
        ("identity", &ev["dnstap"]["identity"]),
        ("operation", &ev["dnstap"]["operation"]),
        ("protocol", &ev["network"]["protocol"]),
    ] {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            m.insert(label.to_string(), s.to_string());
        }
    }
    m
}

/// Every stream's entries are in time order within each request.
fn assert_time_order_per_request(entries: &[StoredEntry]) {
    let mut last: HashMap<(u64, &BTreeMap<String, String>), i64> = HashMap::new();
    for e in entries {
        let k = (e.request, &e.labels);
        if let Some(&prev) = last.get(&k) {
            assert!(
                prev <= e.ts_ns,
                "request {}: stream {:?} not in time order ({prev} then {})",
                e.request,
                e.labels,
                e.ts_ns
            );
        }
        last.insert(k, e.ts_ns);
    }
}

/// The stored lines are exactly `published` (as sets; a line is stored at most once).
fn assert_exactly(r: &LokiReceiver, published: &BTreeSet<&str>) -> Vec<StoredEntry> {
    let entries = r.entries();
    let mut seen = BTreeSet::new();
    for e in &entries {
        assert!(seen.insert(e.line.as_str()), "stored twice: {}", e.line);
    }
    let missing = published.difference(&seen).count();
    let extra = seen.difference(published).count();
    assert_eq!((missing, extra), (0, 0), "lines missing / not published");
    entries
}

#[test]
fn every_capture_arrives_exactly_once_with_its_labels_and_event_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start_with(Limits {
        auth_enabled: true,
        ..old_captures_ok()
    });
    let mut published = Vec::new();
    for name in testdata::captures() {
        published.extend(replay(nats.url(), &name));
    }
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/loki.toml");
    let mut loki = start_loki(
        dir.path(),
        "loki",
        &js_input(&nats, "loki"),
        &r.push_url(),
        &[
            "--config",
            &config.display().to_string(),
            "--tenant",
            "tapbus-it",
        ],
        &[],
    );
    wait(
        "every line in the receiver",
        Duration::from_secs(240),
        &[&loki],
        || r.len() >= want.len(),
    );
    let entries = assert_exactly(&r, &want);
    for e in &entries {
        let ev: Value = serde_json::from_str(&e.line).expect("line is the event JSON");
        assert_eq!(e.labels, event_labels(&ev), "{}", e.line);
        assert_eq!(
            Some(e.ts_ns),
            ev["dnstap"]["timestamp"].as_i64(),
            "{}",
            e.line
        );
        assert_eq!(e.tenant, "tapbus-it");
        assert!(e.structured_metadata.is_empty());
    }
    assert_time_order_per_request(&entries);
    for q in r.requests() {
        assert_eq!(q.org_id.as_deref(), Some("tapbus-it"));
        assert_eq!(q.content_type.as_deref(), Some("application/x-protobuf"));
        assert_eq!(q.status, 204, "{q:?}");
    }
    let s = r.stats();
    assert_eq!(s.entries_accepted as usize, want.len());
    assert!(s.refused.is_empty(), "{s:?}");
    let text = loki.metrics();
    assert_eq!(
        metric(&text, "tapbus_loki_lines_total", &[]) as usize,
        published.len(),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_pushed_lines_total", &[]) as usize,
        published.len()
    );
    assert_eq!(
        metric(&text, "tapbus_loki_dropped_lines_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_retries_total", &[]),
        0.0,
        "{text}"
    );
    assert!(metric(&text, "tapbus_loki_requests_total", &[("status", "204")]) >= 1.0);
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&loki],
        || durable_state(&nats, "loki") == (0, 0),
    );
    assert!(loki.proc.terminate().success(), "{}", loki.log());
}

#[test]
fn old_event_times_are_refused_by_the_7_day_rule_counted_and_acked_and_received_time_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start();
    let capture = "unbound.fstrm";
    let published = replay(nats.url(), capture);
    let newest = published
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["dnstap"]["timestamp"].as_i64())
        .max()
        .expect("times");
    assert!(
        newest < now_ns() - 7 * DAY.as_nanos() as i64,
        "the capture is not older than 7 days: this test needs it to be"
    );
    let mut loki = start_loki(
        dir.path(),
        "event",
        &js_input(&nats, "event"),
        &r.push_url(),
        &[],
        &[],
    );
    let n = published.len() as f64;
    wait(
        "every line refused and counted",
        Duration::from_secs(60),
        &[&loki],
        || {
            metric(
                &loki.metrics(),
                "tapbus_loki_dropped_lines_total",
                &[("reason", "greater_than_max_sample_age")],
            ) == n
        },
    );
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&loki],
        || durable_state(&nats, "event") == (0, 0),
    );
    assert!(r.is_empty());
    let s = r.stats();
    assert_eq!(s.refused("greater_than_max_sample_age") as f64, n);
    assert_eq!(s.total_requests(), s.status(400), "{s:?}");
    // Nothing retried: the request count stays where it is.
    let before = s.total_requests();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.stats().total_requests(), before);
    let text = loki.metrics();
    assert_eq!(
        metric(&text, "tapbus_loki_retries_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_pushed_lines_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_requests_total", &[("status", "400")]),
        before as f64
    );
    assert!(loki.proc.terminate().success(), "{}", loki.log());

    // The same capture stamped with the time received: all stored (JSON this time).
    let t0 = now_ns();
    let mut recv = start_loki(
        dir.path(),
        "received",
        &js_input(&nats, "received"),
        &r.push_url(),
        &[],
        &[
            ("TAPBUS_TIMESTAMP", "received"),
            ("TAPBUS_ENCODING", "json"),
        ],
    );
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    wait(
        "every line stored",
        Duration::from_secs(60),
        &[&recv],
        || r.len() >= want.len(),
    );
    let entries = assert_exactly(&r, &want);
    let t1 = now_ns();
    for e in &entries {
        assert!(
            (t0..=t1).contains(&e.ts_ns),
            "received time {} not in [{t0}, {t1}]",
            e.ts_ns
        );
    }
    assert_time_order_per_request(&entries);
    let reqs = r.requests();
    assert!(
        reqs.iter().filter(|q| q.status == 204).all(|q| q
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))),
        "{reqs:?}"
    );
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&recv],
        || durable_state(&nats, "received") == (0, 0),
    );
    assert!(recv.proc.terminate().success(), "{}", recv.log());
}

#[test]
fn outage_refused_then_5xx_then_429_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start_with(old_captures_ok());
    // The broker makes the stream; tapbus-loki binds to it.
    let mut published = replay(nats.url(), "unbound.fstrm");
    let mut loki = start_loki(
        dir.path(),
        "loki",
        &js_input(&nats, "loki"),
        &r.push_url(),
        &[],
        &[("TAPBUS_MAX_BACKOFF", "2s")],
    );
    wait(
        "the first capture",
        Duration::from_secs(60),
        &[&loki],
        || r.len() >= published.len(),
    );
    // The bulk capture in the background; Loki goes down in the middle of it.
    let url = nats.url().to_string();
    let bulk = std::thread::spawn(move || replay(&url, "bulk-100k.fstrm"));
    let first = published.len();
    wait(
        "part of the bulk capture",
        Duration::from_secs(120),
        &[&loki],
        || r.len() >= first + 5000,
    );
    r.down();
    // A push Loki had already read may still be stored: count from when the receiver is
    // still (no change for 1 s, at most 10 s).
    let mut at_down = r.len();
    let t0 = Instant::now();
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        if r.len() != at_down {
            at_down = r.len();
            still = Instant::now();
        }
    }
    // More events arrive while Loki is down.
    published.extend(replay(nats.url(), "kresd.fstrm"));
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(r.len(), at_down, "stored while down");
    let retries_down = metric(&loki.metrics(), "tapbus_loki_retries_total", &[]);
    assert!(
        retries_down > 0.0,
        "no retry while refused: {}",
        loki.metrics()
    );
    // Up, but 503 for 8 s, then three 429s with Retry-After: 1.
    r.fail_for(Duration::from_secs(8), 503, None);
    r.fail_next(3, 429, Some(1));
    r.up();
    published.extend(bulk.join().expect("bulk replay"));
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    wait(
        "every line after the outage",
        Duration::from_secs(300),
        &[&loki],
        || r.len() >= want.len(),
    );
    // Exactly the published lines, none twice: re-pushed entries (same stream, event time
    // and line) are Loki's duplicates and dropped by it.
    let entries = assert_exactly(&r, &want);
    assert_time_order_per_request(&entries);
    let s = r.stats();
    assert!(s.status(503) >= 1, "{s:?}");
    assert_eq!(s.status(429), 3, "{s:?}");
    assert!(s.refused.is_empty(), "{s:?}");
    let text = loki.metrics();
    assert!(
        metric(&text, "tapbus_loki_retries_total", &[]) >= retries_down + 4.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_dropped_lines_total", &[]),
        0.0,
        "{text}"
    );
    // Lines taken from the bus: every event, plus redeliveries if any.
    assert!(
        metric(&text, "tapbus_loki_lines_total", &[]) as usize >= want.len(),
        "{text}"
    );
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&loki],
        || durable_state(&nats, "loki") == (0, 0),
    );
    assert!(loki.proc.terminate().success(), "{}", loki.log());
}

#[test]
fn partial_400_counts_the_refused_by_reason_stores_the_rest_and_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let published = replay(nats.url(), "unbound.fstrm");
    let mut times: Vec<i64> = published
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["dnstap"]["timestamp"].as_i64())
        .collect();
    times.sort();
    let mut lens: Vec<usize> = published.iter().map(String::len).collect();
    lens.sort();
    // Half the events older than the oldest acceptable time, and of the others the longer
    // half too long: every batch mixes stored and refused entries.
    let median_t = times[times.len() / 2];
    let max_age = Duration::from_nanos((now_ns() - median_t) as u64);
    let r = LokiReceiver::start_with(Limits {
        reject_old_samples_max_age: max_age,
        max_line_size: lens[lens.len() / 2],
        max_chunk_age: 100 * 365 * DAY,
        ..Limits::default()
    });
    let mut loki = start_loki(
        dir.path(),
        "loki",
        &js_input(&nats, "loki"),
        &r.push_url(),
        &[],
        &[],
    );
    let n = published.len() as u64;
    let settled = |r: &LokiReceiver| {
        let s = r.stats();
        s.entries_accepted + s.refused.values().sum::<u64>() >= n
    };
    wait(
        "every line stored or refused",
        Duration::from_secs(60),
        &[&loki],
        || settled(&r),
    );
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&loki],
        || durable_state(&nats, "loki") == (0, 0),
    );
    let s = r.stats();
    let old = s.refused("greater_than_max_sample_age");
    let long = s.refused("line_too_long");
    assert!(old > 0 && long > 0 && s.entries_accepted > 0, "{s:?}");
    assert_eq!(s.entries_accepted + old + long, n, "{s:?}");
    assert!(s.status(400) >= 1, "{s:?}");
    // Not retried: as many requests as tapbus-loki made, no more later.
    let text = loki.metrics();
    assert_eq!(
        metric(&text, "tapbus_loki_retries_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_requests_total", &[]) as u64,
        s.total_requests(),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.stats().total_requests(), s.total_requests());
    // Counted by Loki's reason names, exactly as the receiver refused them.
    for (reason, want) in [
        ("greater_than_max_sample_age", old),
        ("line_too_long", long),
    ] {
        assert_eq!(
            metric(
                &text,
                "tapbus_loki_dropped_lines_total",
                &[("reason", reason)]
            ) as u64,
            want,
            "{reason}: {text}"
        );
    }
    assert_eq!(
        metric(&text, "tapbus_loki_dropped_lines_total", &[]) as u64,
        old + long,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tapbus_loki_pushed_lines_total", &[]) as u64,
        s.entries_accepted,
        "{text}"
    );
    // What was stored is what should have been.
    let all: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    let entries = r.entries();
    assert_eq!(entries.len() as u64, s.entries_accepted);
    for e in &entries {
        assert!(all.contains(e.line.as_str()), "not published: {}", e.line);
        assert!(e.line.len() <= lens[lens.len() / 2]);
        assert!(e.ts_ns >= median_t, "too old but stored: {}", e.line);
    }
    assert!(loki.proc.terminate().success(), "{}", loki.log());
}

#[test]
fn two_processes_on_one_durable_share_the_work_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start_with(old_captures_ok());
    let mut published = replay(nats.url(), "bind-auth.fstrm");
    let input = js_input(&nats, "shared");
    let mut a = start_loki(dir.path(), "a", &input, &r.push_url(), &[], &[]);
    let mut b = start_loki(
        dir.path(),
        "b",
        &input,
        &r.push_url(),
        &[],
        &[("TAPBUS_ENCODING", "json")],
    );
    published.extend(replay(nats.url(), "bulk-100k.fstrm"));
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    wait("every line", Duration::from_secs(300), &[&a, &b], || {
        r.len() >= want.len()
    });
    let entries = assert_exactly(&r, &want);
    assert_time_order_per_request(&entries);
    wait(
        "the durable drained",
        Duration::from_secs(30),
        &[&a, &b],
        || durable_state(&nats, "shared") == (0, 0),
    );
    let (pa, pb) = (
        metric(&a.metrics(), "tapbus_loki_pushed_lines_total", &[]) as usize,
        metric(&b.metrics(), "tapbus_loki_pushed_lines_total", &[]) as usize,
    );
    assert!(pa > 0 && pb > 0, "both take a share: {pa} {pb}");
    assert!(pa + pb >= want.len(), "{pa} + {pb}");
    // Both encodings reached the receiver.
    let types: BTreeSet<String> = r
        .requests()
        .into_iter()
        .filter_map(|q| q.content_type)
        .map(|c| c.split(';').next().unwrap_or("").to_string())
        .collect();
    assert!(
        types.contains("application/x-protobuf") && types.contains("application/json"),
        "{types:?}"
    );
    assert!(a.proc.terminate().success(), "{}", a.log());
    assert!(b.proc.terminate().success(), "{}", b.log());
}

#[test]
fn reduced_records_arrive_with_kind_reduced_and_their_reduction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start_with(old_captures_ok());
    replay(nats.url(), "unbound.fstrm");
    let mut loki = start_loki(
        dir.path(),
        "loki",
        &format!("{}/tapbus.reduced.>", nats.url()),
        &r.push_url(),
        &[],
        &[],
    );
    // The test's own subscription sees every record reduce publishes.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let mut sub = rt
        .block_on(client.subscribe("tapbus.reduced.>"))
        .expect("subscribe");
    rt.block_on(client.flush()).expect("flush");
    let mut reduce = Proc::spawn(
        Command::new(bin("tapbus-reduce"))
            .args([
                "--input",
                &js_input(&nats, "reduce"),
                "--output",
                nats.url(),
                "--metrics-listen",
                "",
            ])
            .env("TAPBUS_IDLE_FLUSH", "1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let mut records: Vec<(String, String)> = Vec::new();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until records stop coming for 5 s (after the first).
        while Instant::now() < deadline {
            let wait = if records.is_empty() { 30 } else { 5 };
            match tokio::time::timeout(Duration::from_secs(wait), sub.next()).await {
                Ok(Some(m)) => records.push((
                    m.subject.to_string(),
                    String::from_utf8(m.payload.to_vec()).expect("utf-8 record"),
                )),
                _ => break,
            }
        }
    });
    assert!(!records.is_empty(), "reduce published nothing");
    let want: BTreeSet<&str> = records.iter().map(|(_, p)| p.as_str()).collect();
    wait(
        "every record in the receiver",
        Duration::from_secs(60),
        &[&loki],
        || r.len() >= want.len(),
    );
    let entries = assert_exactly(&r, &want);
    let subject_of: HashMap<&str, &str> = records
        .iter()
        .map(|(s, p)| (p.as_str(), s.as_str()))
        .collect();
    for e in &entries {
        let rec: Value = serde_json::from_str(&e.line).expect("record json");
        let reduction = rec["reduction"].as_str().expect("reduction");
        assert_eq!(
            subject_of[e.line.as_str()],
            format!("tapbus.reduced.{reduction}")
        );
        let mut labels = BTreeMap::new();
        labels.insert("job".to_string(), "tapbus".to_string());
        labels.insert("kind".to_string(), "reduced".to_string());
        labels.insert("reduction".to_string(), reduction.to_string());
        if let Some(id) = rec["identity"].as_str().filter(|s| !s.is_empty()) {
            labels.insert("identity".to_string(), id.to_string());
        }
        assert_eq!(e.labels, labels, "{}", e.line);
        assert_eq!(Some(e.ts_ns), rec["window-end-ns"].as_i64(), "{}", e.line);
    }
    assert_time_order_per_request(&entries);
    assert!(reduce.terminate().success());
    assert!(loki.proc.terminate().success(), "{}", loki.log());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("loki.toml");
    std::fs::write(
        &cfg,
        "url = \"http://127.0.0.1:1/loki/api/v1/push\"\n[input]\nurl = \"nats://127.0.0.1:1\"\n[labels]\nfields = [\"qname\"]\n",
    )
    .expect("write config");
    let out = Command::new(loki_bin())
        .args([
            "--config",
            &cfg.display().to_string(),
            "--metrics-listen",
            "",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("labels.fields"), "{err}");
    let out = Command::new(loki_bin())
        .args([
            "--input",
            "nats://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:1/",
            "--metrics-listen",
            "",
        ])
        .env("TAPBUS_ENCODING", "xml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("encoding")
    );
}

/// `[privacy]`: from clear events on the bus, tapbus-loki stores lines whose client
/// addresses are truncated (every one, ECS prefixes included), with the structured
/// metadata read from the rewritten line; every event arrives once.
#[test]
fn privacy_view_stores_pseudonymised_lines_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(&dir.path().join("js"));
    let r = LokiReceiver::start_with(old_captures_ok());
    let mut published = Vec::new();
    for name in ["unbound.fstrm", "dnsdist.fstrm"] {
        published.extend(replay(nats.url(), name));
    }
    let mut loki = start_loki(
        dir.path(),
        "loki",
        &js_input(&nats, "loki-private"),
        &r.push_url(),
        &[],
        &[
            ("TAPBUS_LOG", "info"),
            ("TAPBUS_PRIVACY__CLIENT_IP", "truncate"),
            ("TAPBUS_PRIVACY__TRUNCATE_V4", "16"),
            ("TAPBUS_PRIVACY__TRUNCATE_V6", "32"),
            ("TAPBUS_LABELS__STRUCTURED_METADATA", "[query_address]"),
        ],
    );
    wait(
        "every line in the receiver",
        Duration::from_secs(120),
        &[&loki],
        || r.len() >= published.len(),
    );
    let entries = r.entries();
    assert_eq!(entries.len(), published.len());
    // The lines are the published events with every client address truncated.
    let truncate = |a: &str| -> String {
        match a.parse::<std::net::IpAddr>().expect("address") {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                std::net::Ipv4Addr::new(o[0], o[1], 0, 0).to_string()
            }
            std::net::IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[4..].fill(0);
                std::net::Ipv6Addr::from(o).to_string()
            }
        }
    };
    let mut want: Vec<Value> = published
        .iter()
        .map(|p| {
            let mut ev: Value = serde_json::from_str(p).expect("event");
            for k in ["query-ip", "response-ip"] {
                if let Some(a) = ev["network"][k].as_str() {
                    ev["network"][k] = truncate(a).into();
                }
            }
            if let Some(opts) = ev
                .get_mut("edns")
                .and_then(|e| e.get_mut("options"))
                .and_then(|o| o.as_array_mut())
            {
                for o in opts.iter_mut().filter(|o| o["code"] == 8) {
                    let (a, len) = o["data"]
                        .as_str()
                        .and_then(|d| d.split_once('/'))
                        .map(|(a, l)| (a.to_string(), l.to_string()))
                        .expect("subnet");
                    let l: u8 = len.parse().expect("len");
                    let t = truncate(&a);
                    // The shorter of the two prefixes: the subnet's own, or the view's.
                    let ip: std::net::IpAddr = t.parse().expect("ip");
                    let keep = match ip {
                        std::net::IpAddr::V4(_) => l.min(16),
                        std::net::IpAddr::V6(_) => l.min(32),
                    };
                    let masked = match a.parse::<std::net::IpAddr>().expect("ip") {
                        std::net::IpAddr::V4(v4) => {
                            let m = u32::from(v4)
                                & (u32::MAX.checked_shl(32 - u32::from(keep)).unwrap_or(0));
                            std::net::Ipv4Addr::from(m).to_string()
                        }
                        std::net::IpAddr::V6(v6) => {
                            let m = u128::from(v6)
                                & (u128::MAX.checked_shl(128 - u32::from(keep)).unwrap_or(0));
                            std::net::Ipv6Addr::from(m).to_string()
                        }
                    };
                    o["data"] = format!("{masked}/{l}").into();
                }
            }
            ev
        })
        .collect();
    let mut got: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::from_str(&e.line).expect("line"))
        .collect();
    let order = |v: &Value| v.to_string();
    want.sort_by_key(order);
    got.sort_by_key(order);
    assert!(got == want, "the lines are not the truncated events");
    for e in &entries {
        let ev: Value = serde_json::from_str(&e.line).expect("line");
        let meta: BTreeMap<_, _> = e.structured_metadata.iter().cloned().collect();
        assert_eq!(
            meta.get("query_address").map(String::as_str),
            ev["network"]["query-ip"].as_str(),
            "metadata from the rewritten line"
        );
        // (127.53.0.0/24, an ECS subnet, stays as it is: /16 keeps all its set bits.)
        // Outside the records (DNS data: glue addresses of name servers, not clients).
        let mut outside = ev.clone();
        if let Some(d) = outside["dns"].as_object_mut() {
            d.remove("resource-records");
        }
        let outside = outside.to_string();
        for clear in ["127.53.0.20", "127.53.0.40", "\"::1\""] {
            assert!(!outside.contains(clear), "{clear} in {}", e.line);
        }
    }
    let text = loki.metrics();
    assert_eq!(metric(&text, "tapbus_loki_dropped_lines_total", &[]), 0.0);
    assert!(loki.log().contains("pseudonymised client addresses"));
    assert!(loki.proc.terminate().success(), "{}", loki.log());
}
