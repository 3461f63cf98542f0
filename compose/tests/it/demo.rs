//! The README's main command, for real and end to end: `scripts/demo.sh` (no install, the
//! binaries of this build) starts NATS with JetStream, the broker, reduce, aggregate,
//! mimir, two tapbus-loki (into the test suite's Loki receiver), Prometheus, mosquitto,
//! BIND named (authoritative and caching, from `named/`) and unbound (from `unbound/`),
//! and runs one bounded round of dnsperf against both resolvers. The test then checks that
//! every store agrees with what dnsperf sent and with what the broker put on the bus:
//!
//! - the DNSTAP stream: per server, one CLIENT_QUERY and one CLIENT_RESPONSE per query
//!   sent, with dnsperf's rcodes;
//! - Prometheus (through aggregate and mimir): `dnstap_messages_total` and the CoreDNS
//!   profile per server and operation equal to the bus; the pipeline's own `/metrics`
//!   scraped;
//! - the Loki receiver: every event exactly once as a line (labels from the event) and
//!   every reduced record;
//! - the REDUCED stream: the `client` records sum to the client responses, per server and
//!   rcode;
//!
//! and finally that SIGINT (Ctrl-C) stops the demo with exit code 0 and no process left.
//! The readiness probes of the script (`tapbus.test SOA`) are not dnsperf's: the
//! comparisons with what was sent leave qtype SOA out (dnsperf sends none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapbus_testsupport::jetstream::{stream_info_messages, stream_messages};
use tapbus_testsupport::loki::LokiReceiver;
use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
use tapbus_testsupport::{http_get, need};

use crate::{binaries, read, root};

/// What one dnsperf report says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Report {
    sent: u64,
    completed: u64,
    lost: u64,
    rcodes: BTreeMap<String, u64>,
}

/// dnsperf's "Statistics:" block.
fn parse_report(text: &str) -> Option<Report> {
    let num = |key: &str| -> Option<u64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(key))?;
        l.trim_start()[key.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut r = Report {
        sent: num("Queries sent:")?,
        completed: num("Queries completed:")?,
        lost: num("Queries lost:")?,
        rcodes: BTreeMap::new(),
    };
    if let Some(l) = text
        .lines()
        .find(|l| l.trim_start().starts_with("Response codes:"))
    {
        let list = l.trim_start()["Response codes:".len()..].trim();
        for part in list.split(", ").filter(|p| !p.is_empty()) {
            let mut w = part.split_whitespace();
            let (Some(code), Some(n)) = (w.next(), w.next()) else {
                return None;
            };
            r.rcodes.insert(code.to_string(), n.parse().ok()?);
        }
    }
    Some(r)
}

#[test]
fn dnsperf_report_parses() {
    let text = "Statistics:\n\n  Queries sent:         99\n  Queries completed:    98 (98.99%)\n  \
                Queries lost:         1 (1.01%)\n\n  Response codes:       NOERROR 77 (78.57%), \
                NXDOMAIN 11 (11.22%), SERVFAIL 10 (10.20%)\n  Average packet size:  request 33\n";
    let r = parse_report(text).expect("parses");
    assert_eq!((r.sent, r.completed, r.lost), (99, 98, 1));
    assert_eq!(
        r.rcodes,
        BTreeMap::from([
            ("NOERROR".to_string(), 77),
            ("NXDOMAIN".to_string(), 11),
            ("SERVFAIL".to_string(), 10)
        ])
    );
    assert_eq!(parse_report("dnsperf: cannot open socket"), None);
}

/// `KEY=VALUE` lines.
fn env_file(p: &Path) -> BTreeMap<String, String> {
    read(p)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An instant query's series: labels (only `keys`, in order) -> value.
fn prom(port: &str, promql: &str) -> BTreeMap<Vec<String>, u64> {
    let url = format!(
        "/api/v1/query?query={}",
        promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let keys: Vec<&str> = promql
        .split_once("by (")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(k, _)| k.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let body = http_get(&format!("127.0.0.1:{port}"), &url).unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut out = BTreeMap::new();
    for r in v["data"]["result"].as_array().into_iter().flatten() {
        let k = keys
            .iter()
            .map(|k| r["metric"][*k].as_str().unwrap_or("").to_string())
            .collect();
        if let Some(n) = r["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()) {
            out.insert(k, n as u64);
        }
    }
    out
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Waits (bounded) for `f` to hold, with what `why` says on failure; the demo must still
/// be running meanwhile.
fn wait(demo: &mut Proc, out: &Path, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    loop {
        if f() {
            return;
        }
        if let Some(st) = demo.try_wait() {
            panic!("the demo ended ({st}) before {what}:\n{}", read(out));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what} within {secs}s\n--- demo\n{}",
            read(out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn logs(work: &Path) -> String {
    let mut out = String::new();
    for name in [
        "broker.log",
        "reduce.log",
        "aggregate.log",
        "mimir.log",
        "loki-dnstap.log",
        "loki-reduced.log",
    ] {
        let t = std::fs::read_to_string(work.join(name)).unwrap_or_default();
        let tail: Vec<&str> = t.lines().rev().take(15).collect();
        out += &format!("--- {name}\n");
        for l in tail.into_iter().rev() {
            out += l;
            out.push('\n');
        }
    }
    out
}

/// The running script. On drop (a failed assertion) it gets SIGTERM, which stops what it
/// started; whatever is left of its `pids` file after that is killed by PID.
struct Demo {
    proc: Proc,
    work: PathBuf,
}

fn demo_pids(work: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(work.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (p, n) = l.split_once(' ')?;
            Some((p.parse().ok()?, n.to_string()))
        })
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z "))
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.proc.is_running() {
            self.proc.signal("TERM");
            let _ = self.proc.wait_within(Duration::from_secs(90));
        }
        for (pid, _) in demo_pids(&self.work) {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[test]
fn the_demo_runs_the_whole_pipeline_and_every_store_agrees_with_what_was_sent() {
    for p in [
        "nats-server",
        "named",
        "unbound",
        "prometheus",
        "dnsperf",
        "dig",
        "mosquitto",
        "python3",
    ] {
        need(p);
    }
    let bin_dir: PathBuf = binaries()["tapbus-broker"]
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for b in ["tapbus-top", "tapbus-tail"] {
        assert!(binaries().contains_key(b), "{b} is built for the demo");
    }
    let loki = LokiReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let out = dir.path().join("demo.out");
    let mut demo = Demo {
        work: work.clone(),
        proc: Proc::spawn(
            Command::new("bash")
                .arg(root().join("scripts/demo.sh"))
                .env("DEMO_BIN", &bin_dir)
                .env("DEMO_WORK", &work)
                .env("DEMO_NO_INSTALL", "1")
                .env("LOKI_URL", loki.push_url())
                .env("ROUNDS", "1")
                .env("PASSES", "10")
                .env("QPS", "300")
                .env("DURATION", "900")
                .env("DEMO_IDLE_FLUSH", "2s")
                .env("DEMO_INTERVAL", "1s")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).expect("demo out"))
                .stderr(std::fs::File::create(dir.path().join("demo.err")).expect("demo err")),
        ),
    };
    let demo_proc = &mut demo.proc;
    let done = work.join("traffic.done");
    wait(demo_proc, &out, "the traffic round", 240, || done.exists());
    let ports = env_file(&work.join("ports.env"));
    let port = |k: &str| ports.get(k).cloned().unwrap_or_else(|| panic!("{k}"));
    let nats_url = format!("nats://127.0.0.1:{}", port("NATS_PORT"));

    // What dnsperf sent, per server: every query answered (loopback, bounded rate).
    let mut sent: BTreeMap<String, Report> = BTreeMap::new();
    for server in ["named-caching", "unbound"] {
        let lines = read(&work.join(format!("traffic/{server}.queries")))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64;
        let mut total = Report::default();
        for mode in ["udp", "tcp"] {
            let p = work.join(format!("traffic/{server}-1-{mode}.txt"));
            let text = read(&p);
            let r = parse_report(&text).unwrap_or_else(|| panic!("{}:\n{text}", p.display()));
            assert_eq!(r.lost, 0, "{server} {mode}: {text}");
            assert_eq!(r.completed, r.sent, "{server} {mode}: {text}");
            let passes = if mode == "udp" { 10 } else { 1 };
            assert_eq!(r.sent, lines * passes, "{server} {mode}: {text}");
            total.sent += r.sent;
            for (c, n) in r.rcodes {
                *total.rcodes.entry(c).or_default() += n;
            }
        }
        sent.insert(server.to_string(), total);
    }
    // Every list has names that exist, that do not, and (named) one no server serves.
    assert!(
        sent["named-caching"].rcodes.contains_key("SERVFAIL"),
        "{sent:?}"
    );
    assert!(sent["unbound"].rcodes.contains_key("NXDOMAIN"), "{sent:?}");

    // The bus: everything the broker published on NATS is in the stream.
    let broker_metrics = format!("127.0.0.1:{}", port("BROKER_METRICS_PORT"));
    let published = || {
        prom::sum(
            &prom::scrape(&broker_metrics),
            "tapbus_published_total",
            &[("output", "nats")],
        ) as u64
    };
    // dnsperf's responses only (the script's readiness probes are SOA queries).
    let client_responses = |events: &[Value], id: &str| {
        events
            .iter()
            .filter(|e| {
                e["dnstap"]["identity"] == id
                    && e["dnstap"]["operation"] == "CLIENT_RESPONSE"
                    && e["dns"]["qtype"] != "SOA"
            })
            .count() as u64
    };
    let mut stable: Option<(u64, Instant)> = None;
    let mut events: Vec<Value> = Vec::new();
    let mut payloads: Vec<String> = Vec::new();
    wait(
        demo_proc,
        &out,
        "every client response on the bus",
        60,
        || {
            // Everything published is stored, and nothing new for a second (late dnstap
            // from a server would make the later comparisons chase a moving count).
            let n = published();
            if stream_info_messages(&nats_url, "DNSTAP") != Some(n) {
                return false;
            }
            match stable {
                Some((m, since)) if m == n && since.elapsed() >= Duration::from_secs(1) => {}
                Some((m, _)) if m == n => return false,
                _ => {
                    stable = Some((n, Instant::now()));
                    return false;
                }
            }
            let msgs = stream_messages(&nats_url, "DNSTAP");
            events = msgs
                .iter()
                .map(|(_, p)| serde_json::from_slice(p).expect("event JSON"))
                .collect();
            payloads = msgs
                .iter()
                .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
                .collect();
            sent.iter()
                .all(|(id, r)| client_responses(&events, id) >= r.sent)
        },
    );
    let not_soa = |e: &&Value| e["dns"]["qtype"] != "SOA";
    let mut bus: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut bus_rcodes: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut bus_queries: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for e in events.iter().filter(not_soa) {
        let id = s(&e["dnstap"]["identity"]);
        let op = s(&e["dnstap"]["operation"]);
        *bus.entry(vec![id.clone(), op.clone()]).or_default() += 1;
        if op == "CLIENT_RESPONSE" {
            *bus_rcodes
                .entry(vec![id.clone(), s(&e["dns"]["rcode"])])
                .or_default() += 1;
        }
        if op.ends_with("_QUERY") {
            *bus_queries.entry(vec![id]).or_default() += 1;
        }
    }
    for (id, r) in &sent {
        for op in ["CLIENT_QUERY", "CLIENT_RESPONSE"] {
            assert_eq!(
                bus.get(&vec![id.clone(), op.to_string()]).copied(),
                Some(r.sent),
                "{id} {op} on the bus: {bus:?}"
            );
        }
        for (code, n) in &r.rcodes {
            assert_eq!(
                bus_rcodes.get(&vec![id.clone(), code.clone()]).copied(),
                Some(*n),
                "{id} {code}: {bus_rcodes:?}"
            );
        }
    }
    assert!(
        bus.keys()
            .any(|k| k[0] == "named-auth" && k[1] == "AUTH_QUERY"),
        "the caching server's misses reach the authoritative one: {bus:?}"
    );

    // Prometheus, through tapbus-aggregate and tapbus-mimir: the same numbers.
    let prom_port = port("PROMETHEUS_PORT");
    let q_ops =
        "sum by (identity, operation) (dnstap_messages_total{instance=\"demo\",qtype!=\"SOA\"})";
    let q_rcodes = "sum by (identity, rcode) (dnstap_messages_total{instance=\"demo\",operation=\"CLIENT_RESPONSE\",qtype!=\"SOA\"})";
    let q_coredns = "sum by (server) (coredns_dns_requests_total{instance=\"demo\",type!=\"SOA\"})";
    wait(
        demo_proc,
        &out,
        "Prometheus to agree with the bus",
        90,
        || prom(&prom_port, q_ops) == bus,
    );
    assert_eq!(prom(&prom_port, q_rcodes), bus_rcodes);
    assert_eq!(prom(&prom_port, q_coredns), bus_queries);
    // The pipeline's own metrics are scraped too (the health dashboard's data).
    let q_up = "sum by (job) (up{job=\"tapbus\"})";
    wait(demo_proc, &out, "six tapbus targets scraped", 30, || {
        prom(&prom_port, q_up).get(&vec!["tapbus".to_string()]) == Some(&6)
    });

    // The REDUCED stream: the client records sum to the client responses.
    let records = || -> Vec<Value> {
        stream_messages(&nats_url, "REDUCED")
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).expect("record JSON"))
            .collect()
    };
    let client_sums = |recs: &[Value]| {
        let mut m: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for r in recs.iter().filter(|r| r["reduction"] == "client") {
            if r["key"]["qtype"] == "SOA" {
                continue;
            }
            *m.entry(vec![s(&r["identity"]), s(&r["key"]["rcode"])])
                .or_default() += r["count"].as_u64().unwrap_or(0);
        }
        m
    };
    wait(demo_proc, &out, "the reduced records", 60, || {
        client_sums(&records()) == bus_rcodes
    });
    let recs = records();
    let total: u64 = recs
        .iter()
        .filter(|r| r["reduction"] == "client")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    let all_responses = events
        .iter()
        .filter(|e| e["dnstap"]["operation"] == "CLIENT_RESPONSE")
        .count() as u64;
    assert_eq!(total, all_responses, "every client response in one record");

    // Loki: every event once, every record once.
    let lines = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = loki
            .entries()
            .into_iter()
            .filter(|e| e.labels.get("kind").map(String::as_str) == Some(kind))
            .map(|e| e.line)
            .collect();
        v.sort();
        v
    };
    let mut want_events = payloads.clone();
    want_events.sort();
    wait(demo_proc, &out, "every event in Loki", 60, || {
        lines("event").len() >= want_events.len()
    });
    assert_eq!(lines("event"), want_events, "{}", logs(&work));
    for r in loki.requests() {
        assert_eq!(
            r.org_id.as_deref(),
            Some("dns"),
            "the tenant of compose/config/loki.toml"
        );
        assert_eq!(r.status, 204, "{r:?}");
    }
    for e in loki.entries() {
        assert_eq!(e.labels.get("job").map(String::as_str), Some("tapbus"));
        if e.labels.get("kind").map(String::as_str) == Some("event") {
            let v: Value = serde_json::from_str(&e.line).expect("line JSON");
            assert_eq!(e.labels.get("identity"), Some(&s(&v["dnstap"]["identity"])));
            assert_eq!(
                e.labels.get("operation"),
                Some(&s(&v["dnstap"]["operation"]))
            );
        }
    }
    let mut want_records: Vec<String> = stream_messages(&nats_url, "REDUCED")
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    want_records.sort();
    wait(demo_proc, &out, "every record in Loki", 60, || {
        lines("reduced").len() >= want_records.len()
    });
    assert_eq!(lines("reduced"), want_records, "{}", logs(&work));

    // Ctrl-C: everything stops, the demo says what reached the stores, exit code 0.
    let pids = demo_pids(&work);
    assert!(pids.len() >= 13, "{pids:?}");
    demo_proc.signal("INT");
    let st = demo_proc
        .wait_within(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the demo did not stop on SIGINT:\n{}", read(&out)));
    let text = read(&out);
    assert!(st.success(), "{st}\n{text}");
    assert!(text.contains("what reached the stores"), "{text}");
    assert!(text.contains("stream DNSTAP"), "{text}");
    for (pid, name) in pids {
        assert!(
            !alive(pid),
            "{name} ({pid}) still runs after the demo stopped"
        );
    }
}
