//! tapbus-tail against every bus kind with a real server, while the broker publishes a
//! capture: what tail prints equals what the broker published (the broker's own `stdout`
//! output of the same run is the reference). Also exit codes, filters, and a consumer
//! killed with SIGKILL whose unacknowledged messages go to its peer.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::{Mosquitto, Nats, Redis};
use tapbus_testsupport::{pause, testdata, wait_until};

const CAPTURE: &str = "unbound.fstrm";

fn tail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-tail"))
}

/// The broker binary of this workspace.
fn broker_bin() -> PathBuf {
    tapbus_testsupport::sibling_bin(&tail_bin(), "tapbus-broker", "tapbus-broker")
}

/// A running tapbus-tail with its standard output and error in files.
struct Tail {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
}

impl Tail {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Tail {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let proc = Proc::spawn(
            Command::new(tail_bin())
                .args(args)
                .env("TAPBUS_LOG", "info")
                .stdout(std::fs::File::create(&out).expect("out file"))
                .stderr(std::fs::File::create(&err).expect("err file")),
        );
        Tail { proc, out, err }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_subscribed(&self) {
        wait_until("tail subscribed", Duration::from_secs(20), || {
            self.stderr().contains("subscribed")
        });
    }

    /// Waits for the exit; returns the code and the lines printed.
    fn finish(mut self, limit: Duration) -> (i32, Vec<String>) {
        let st = self
            .proc
            .wait_within(limit)
            .unwrap_or_else(|| panic!("tail did not exit; stderr:\n{}", self.stderr()));
        let text = std::fs::read_to_string(&self.out).expect("tail output");
        (
            st.code().unwrap_or(-1),
            text.lines().map(str::to_owned).collect(),
        )
    }
}

/// Publishes the capture through the broker to `output` (plus the broker's stdout as the
/// reference), with extra `TAPBUS_*` settings for that output; returns the events the
/// broker wrote to stdout, in order.
fn publish(output: &str, env: &[(&str, &str)]) -> Vec<String> {
    tapbus_testsupport::broker_publish(&broker_bin(), CAPTURE, output, env)
}

/// The `jetstream://` subscriber URL for `path_query` (e.g. `DNSTAP?durable=x`) on the
/// servers of `nats_urls` (one `nats://` URL or a comma-separated list).
fn js_url(nats_urls: &str, path_query: &str) -> String {
    format!(
        "{}/{path_query}",
        nats_urls.replace("nats://", "jetstream://")
    )
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Subscribe-first buses: tail subscribes, the broker publishes, tail prints `--count`.
fn live(input: &str, output: &str, env: &[(&str, &str)]) {
    let d = dir();
    let n = testdata::expected_count(CAPTURE).to_string();
    let tail = Tail::start(
        d.path(),
        "tail",
        &[
            "--input",
            input,
            "--json",
            "--count",
            &n,
            "--timeout",
            "60s",
        ],
    );
    tail.wait_subscribed();
    let published = publish(output, env);
    let (code, got) = tail.finish(Duration::from_secs(70));
    assert_eq!(code, 0, "exit code");
    assert_eq!(got.len(), published.len());
    assert!(
        got == published,
        "{input}: printed events differ from the published ones"
    );
}

#[test]
fn nats_core() {
    let nats = Nats::start();
    live(nats.url(), nats.url(), &[]);
}

#[test]
fn mqtt_qos1() {
    // mosquitto queues at most 1000 messages per client by default and drops the rest:
    // the broker publishes the capture faster than tail prints it.
    let m = Mosquitto::start_with(
        tapbus_testsupport::free_port(),
        "max_queued_messages 100000\n",
    );
    live(
        &format!("{}/dnstap/#", m.url()),
        &m.url(),
        &[("TAPBUS_OUTPUTS__BUS__QOS", "1")],
    );
}

#[test]
fn redis_pubsub() {
    let r = Redis::start();
    live(&r.url(), &r.url(), &[]);
}

#[test]
fn jetstream_durable_reads_what_the_stream_stored() {
    let d = dir();
    let nats = Nats::start_jetstream(&d.path().join("js"));
    let published = publish(nats.url(), &[("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")]);
    let url = js_url(nats.url(), "DNSTAP?durable=ops");
    let n = published.len().to_string();
    let tail = Tail::start(
        d.path(),
        "tail",
        &["--input", &url, "--json", "--count", &n, "--timeout", "60s"],
    );
    let (code, got) = tail.finish(Duration::from_secs(70));
    assert_eq!(code, 0, "exit code");
    assert!(got == published, "JetStream: printed events differ");
    // Everything was acknowledged: the durable has nothing more to give.
    let again = Tail::start(
        d.path(),
        "again",
        &["--input", &url, "--json", "--timeout", "3s"],
    );
    let (code, got) = again.finish(Duration::from_secs(20));
    assert_eq!((code, got.len()), (0, 0), "acked messages came back");
}

/// `--count 5` on a durable takes at most a few times what it prints (pulls of at most 5,
/// a channel of 5) and hands back what it took beyond (NAK); what was taken stays bounded
/// by the count (it was the whole prefetch, 1,906 pending after `--count 5`), and the next
/// reader of the durable gets every other event exactly once.
#[test]
fn jetstream_count_takes_what_it_prints_and_hands_back_the_rest() {
    let d = dir();
    let nats = Nats::start_jetstream(&d.path().join("js"));
    let published = publish(nats.url(), &[("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")]);
    let url = js_url(nats.url(), "DNSTAP?durable=few");
    let first = Tail::start(
        d.path(),
        "first",
        &[
            "--input",
            &url,
            "--json",
            "--count",
            "5",
            "--timeout",
            "30s",
        ],
    );
    let first_err = first.err.clone();
    let (code, got) = first.finish(Duration::from_secs(40));
    assert_eq!(code, 0, "exit code");
    assert_eq!(got, published[..5]);
    let first_log = std::fs::read_to_string(&first_err).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let info = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("DNSTAP").await.expect("stream");
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("few").await.expect("durable");
        c.info().await.expect("info").clone()
    });
    // Bounded by the count: a pull of 5, a channel of 5 and what was handed back (NAKed
    // messages stay pending until they are delivered again).
    assert!(
        info.num_ack_pending <= 20,
        "taken and not printed: {}",
        info.num_ack_pending
    );
    let rest = published.len() - 5;
    let second = Tail::start(
        d.path(),
        "second",
        &[
            "--input",
            &url,
            "--json",
            "--count",
            &rest.to_string(),
            "--timeout",
            "50s",
        ],
    );
    let second_err = second.err.clone();
    let (code, got) = second.finish(Duration::from_secs(60));
    let second_log = std::fs::read_to_string(&second_err).unwrap_or_default();
    assert_eq!(
        (code, got.len()),
        (0, rest),
        "the rest; second's log:\n{second_log}"
    );
    let mut want = published[5..].to_vec();
    let mut got = got;
    want.sort();
    got.sort();
    if got != want {
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        let first_five: Vec<_> = extra
            .iter()
            .filter(|e| published[..5].contains(e))
            .collect();
        panic!(
            "the rest, each once: {} not expected ({} of them among the first 5), {} missing; extra {:?}\nfirst's log:\n{}\nsecond's log:\n{}",
            extra.len(),
            first_five.len(),
            missing.len(),
            extra.iter().take(3).collect::<Vec<_>>(),
            first_log,
            second_log,
        );
    }
}

/// The consumer names on a stream, read with the JetStream API.
fn consumer_names(nats_url: &str, stream: &str) -> Vec<String> {
    use futures::TryStreamExt as _;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(nats_url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let s = js.get_stream(stream).await.expect("stream");
        s.consumer_names().try_collect().await.expect("names")
    })
}

/// Without `durable=`, tail reads through a consumer of its own (`tapbus-tail-<pid>`)
/// that the server deletes after `inactive_threshold`: nothing is left behind.
#[test]
fn jetstream_without_durable_leaves_no_consumer() {
    let d = dir();
    let nats = Nats::start_jetstream(&d.path().join("js"));
    let published = publish(nats.url(), &[("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")]);
    let url = js_url(nats.url(), "DNSTAP?inactive=2s");
    let tail = Tail::start(
        d.path(),
        "tail",
        &[
            "--input",
            &url,
            "--json",
            "--count",
            "10",
            "--timeout",
            "60s",
        ],
    );
    let pid = tail.pid();
    let (code, got) = tail.finish(Duration::from_secs(70));
    assert_eq!(code, 0, "exit code");
    assert_eq!(got[..], published[..10]);
    let name = format!("tapbus-tail-{pid}");
    let names = consumer_names(nats.url(), "DNSTAP");
    assert!(names.contains(&name), "{name} not in {names:?}");
    // The server sweeps inactive consumers every few seconds.
    wait_until(
        "the server deleted the idle consumer",
        Duration::from_secs(30),
        || {
            pause(Duration::from_millis(500));
            consumer_names(nats.url(), "DNSTAP").is_empty()
        },
    );
}

#[test]
fn redis_stream_group() {
    let r = Redis::start();
    let published = publish(&r.url(), &[("TAPBUS_OUTPUTS__BUS__MODE", "stream")]);
    let d = dir();
    let url = format!("{}?stream=dnstap&group=ops&consumer=a", r.url());
    let n = published.len().to_string();
    let tail = Tail::start(
        d.path(),
        "tail",
        &["--input", &url, "--json", "--count", &n, "--timeout", "60s"],
    );
    let (code, got) = tail.finish(Duration::from_secs(70));
    assert_eq!(code, 0);
    assert!(got == published, "Redis stream: printed events differ");
}

#[test]
fn filters_and_text_lines() {
    let nats = Nats::start();
    let d = dir();
    let filter = "operation=CLIENT_RESPONSE rcode=NXDOMAIN";
    let json = Tail::start(
        d.path(),
        "json",
        &[
            "--input",
            nats.url(),
            "--json",
            "--filter",
            filter,
            "--timeout",
            "15s",
        ],
    );
    let text = Tail::start(
        d.path(),
        "text",
        &["--input", nats.url(), "--timeout", "15s"],
    );
    json.wait_subscribed();
    text.wait_subscribed();
    let published = publish(nats.url(), &[]);
    let want: Vec<&String> = published
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("event JSON");
            v["dnstap"]["operation"] == "CLIENT_RESPONSE" && v["dns"]["rcode"] == "NXDOMAIN"
        })
        .collect();
    assert!(!want.is_empty(), "the capture has NXDOMAIN responses");
    let (code, got) = json.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "timeout without --count exits 0");
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    let (code, lines) = text.finish(Duration::from_secs(30));
    assert_eq!(code, 0);
    assert_eq!(lines.len(), published.len());
    for (line, ev) in lines.iter().zip(&published) {
        let v: serde_json::Value = serde_json::from_str(ev).expect("event JSON");
        let op = v["dnstap"]["operation"].as_str().unwrap_or_default();
        assert!(line.contains(op), "{line:?} lacks {op}");
        if let Some(q) = v["dns"]["qname"].as_str() {
            assert!(line.contains(q), "{line:?} lacks {q}");
        }
    }
}

#[test]
fn exit_codes() {
    let d = dir();
    let nats = Nats::start();
    // --count not reached within --timeout: 1.
    let t = Tail::start(
        d.path(),
        "timeout",
        &["--input", nats.url(), "--count", "5", "--timeout", "2s"],
    );
    assert_eq!(t.finish(Duration::from_secs(20)).0, 1);
    // Bad URL, bad filter: 2, naming the key.
    let t = Tail::start(d.path(), "badurl", &["--input", "kafka://x:1"]);
    let err = t.err.clone();
    assert_eq!(t.finish(Duration::from_secs(10)).0, 2);
    assert!(
        std::fs::read_to_string(err)
            .unwrap_or_default()
            .contains("input.url")
    );
    let t = Tail::start(
        d.path(),
        "badfilter",
        &["--input", nats.url(), "--filter", "rcode=NXDOMIAN"],
    );
    assert_eq!(t.finish(Duration::from_secs(10)).0, 2);
    // A JetStream stream that does not exist: waited for (one log line), then 3 at the
    // timeout.
    let js = Nats::start_jetstream(&d.path().join("js"));
    let url = js_url(js.url(), "NOSUCH?durable=x");
    let t = Tail::start(d.path(), "nostream", &["--input", &url, "--timeout", "10s"]);
    assert_eq!(t.finish(Duration::from_secs(20)).0, 3);
    // One rule for every bus: a server that is not there within --timeout is 3 (a bus
    // that is up but brings fewer than --count events is 1, above).
    let port = tapbus_testsupport::free_port();
    for (name, input) in [
        ("down-nats", format!("nats://127.0.0.1:{port}")),
        (
            "down-js",
            format!("jetstream://127.0.0.1:{port}/DNSTAP?durable=x"),
        ),
        ("down-mqtt", format!("mqtt://127.0.0.1:{port}")),
        ("down-redis", format!("redis://127.0.0.1:{port}")),
        (
            "down-redis-stream",
            format!("redis://127.0.0.1:{port}?stream=s&group=g"),
        ),
    ] {
        let t = Tail::start(
            d.path(),
            name,
            &["--input", &input, "--count", "1", "--timeout", "2s"],
        );
        assert_eq!(t.finish(Duration::from_secs(20)).0, 3, "{input}");
    }
    // Standard error closed after the first line (`2>&1 | head -1`): no panic (101).
    let mut proc = Proc::spawn(
        Command::new(tail_bin())
            .args([
                "--input",
                &format!("nats://127.0.0.1:{port}"),
                "--timeout",
                "2s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    drop(proc.child.stderr.take());
    let st = proc
        .wait_within(Duration::from_secs(20))
        .expect("tapbus-tail exits");
    assert_eq!(st.code(), Some(3));
}

/// A consumer that took messages and never acknowledged them (its standard output is a
/// pipe nobody reads, so it blocks) is killed with SIGKILL; its peer on the same durable /
/// group gets them: every published event is printed by one of the two.
fn killed_consumer_hands_over(input: &str, published: &[String]) {
    let d = dir();
    let mut a = Proc::spawn(
        Command::new(tail_bin())
            .args(["--input", input, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut pipe = a.child.stdout.take().expect("pipe");
    // Let it take messages until its unread pipe is full.
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.is_running(), "the blocked consumer is still running");
    a.kill();
    let mut a_text = String::new();
    pipe.read_to_string(&mut a_text)
        .expect("read what A printed");
    let b = Tail::start(
        d.path(),
        "b",
        &["--input", input, "--json", "--timeout", "15s"],
    );
    let (code, b_lines) = b.finish(Duration::from_secs(30));
    assert_eq!(code, 0);
    let a_lines: BTreeSet<&str> = a_text.lines().collect();
    assert!(
        a_lines.len() < published.len(),
        "A was meant to block before the end"
    );
    let got: BTreeSet<&str> = a_lines
        .iter()
        .copied()
        .chain(b_lines.iter().map(String::as_str))
        .collect();
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    assert_eq!(
        want.difference(&got).count(),
        0,
        "events lost with the killed consumer"
    );
    assert!(b_lines.len() >= published.len() - a_lines.len());
}

#[test]
fn jetstream_sigkilled_consumer_pending_go_to_its_peer() {
    let d = dir();
    let nats = Nats::start_jetstream(&d.path().join("js"));
    let published = publish(nats.url(), &[("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")]);
    let url = js_url(nats.url(), "DNSTAP?durable=shared&ack_wait=2s");
    killed_consumer_hands_over(&url, &published);
}

#[test]
fn redis_stream_sigkilled_consumer_entries_are_claimed_by_its_peer() {
    let r = Redis::start();
    let published = publish(&r.url(), &[("TAPBUS_OUTPUTS__BUS__MODE", "stream")]);
    // Two consumer names in one group: the peer claims what the dead one left pending.
    let input = format!("{}?stream=dnstap&group=g&claim_idle=1s", r.url());
    killed_consumer_hands_over(&input, &published);
}

/// MQTT has no peer hand-over on mosquitto (a shared subscription keeps a dead member's
/// share queued, docs/bus-urls.md, "Ack semantics per bus"): a persistent session is resumed
/// instead.
/// A (persistent session, fixed client id) blocks on an unread pipe and is SIGKILLed; B,
/// started under the same client id, gets every message A had not acked.
#[test]
fn mqtt_sigkilled_consumer_resumes_under_its_persistent_session() {
    let d = dir();
    let m = Mosquitto::start_with(
        tapbus_testsupport::free_port(),
        "max_queued_messages 100000\n",
    );
    let input = format!("{}/dnstap/#?persistent=true", m.url());
    let a_err = d.path().join("a.err");
    let mut a = Proc::spawn(
        Command::new(tail_bin())
            .args(["--input", &input, "--json"])
            .env("TAPBUS_INPUT__CLIENT_ID", "tail-resume")
            .env("TAPBUS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&a_err).expect("err file")),
    );
    let mut pipe = a.child.stdout.take().expect("pipe");
    wait_until("A subscribed", Duration::from_secs(20), || {
        std::fs::read_to_string(&a_err).is_ok_and(|t| t.contains("subscribed"))
    });
    let published = publish(&m.url(), &[("TAPBUS_OUTPUTS__BUS__QOS", "1")]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.is_running(), "the blocked consumer is still running");
    a.kill();
    let mut a_text = String::new();
    pipe.read_to_string(&mut a_text)
        .expect("read what A printed");
    let b_out = d.path().join("b.out");
    let mut b = Proc::spawn(
        Command::new(tail_bin())
            .args(["--input", &input, "--json", "--timeout", "15s"])
            .env("TAPBUS_INPUT__CLIENT_ID", "tail-resume")
            .stdout(std::fs::File::create(&b_out).expect("out file"))
            .stderr(Stdio::null()),
    );
    let st = b.wait_within(Duration::from_secs(30)).expect("B exits");
    assert_eq!(st.code(), Some(0));
    let b_text = std::fs::read_to_string(&b_out).expect("B output");
    let a_lines: BTreeSet<&str> = a_text.lines().collect();
    assert!(
        a_lines.len() < published.len(),
        "A was meant to block before the end"
    );
    let got: BTreeSet<&str> = a_lines.iter().copied().chain(b_text.lines()).collect();
    let want: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    assert_eq!(
        want.difference(&got).count(),
        0,
        "messages lost with the killed consumer"
    );
}

/// A 3-node JetStream cluster (routes on loopback, stream R3): the broker publishes the bulk
/// capture through the URL list, one node is killed mid-replay, and a durable consumer on
/// the survivors gets exactly what the broker counted as published, every event once.
#[test]
fn cluster_survives_a_killed_node() {
    let mut cluster = tapbus_testsupport::servers::NatsCluster::start(3);
    let urls = cluster.url_list();
    let file = testdata::path("bulk-100k.fstrm");
    let mut broker = Command::new(broker_bin())
        .env(
            "TAPBUS_INPUTS__FILE__URL",
            format!("file://{}", file.display()),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_OUTPUTS__JS__URL", cluster.urls())
        .env("TAPBUS_OUTPUTS__JS__JETSTREAM", "true")
        // The broker creates the stream, replicated on all three nodes.
        .env("TAPBUS_OUTPUTS__JS__STREAM_REPLICAS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        broker.try_wait().expect("broker state").is_none(),
        "the replay should still be running when the node dies"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let replicas = rt.block_on(async {
        let client = async_nats::connect(urls.as_slice()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut s = js
            .get_stream("DNSTAP")
            .await
            .expect("the broker made the stream");
        s.info().await.expect("stream info").config.num_replicas
    });
    assert_eq!(replicas, 3, "stream_replicas");
    // Any one of three nodes may die for an R3 stream.
    cluster.kill(1);
    let mut log = String::new();
    broker
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("broker log");
    let st = broker.wait().expect("broker exit");
    assert!(st.success(), "broker: {st}\n{log}");
    let closing = log
        .lines()
        .find(|l| l.contains("output closed"))
        .unwrap_or_else(|| panic!("no closing line:\n{log}"));
    let field = |name: &str| -> usize {
        closing
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {closing:?}"))
    };
    let (events, published, dropped) = (field("events"), field("published"), field("dropped"));
    assert_eq!(events, 100_002);
    assert_eq!(published + dropped, events, "{closing}");
    assert!(published > 0);
    let live = cluster.running_urls();
    let input = js_url(&live.join(","), "DNSTAP?durable=survivor");
    let d = dir();
    let n = published.to_string();
    let tail = Tail::start(
        d.path(),
        "survivor",
        &[
            "--input",
            &input,
            "--json",
            "--count",
            &n,
            // 20 s alone; the whole suite's parallel load once made it miss 120 s.
            "--timeout",
            "300s",
        ],
    );
    let (code, got) = tail.finish(Duration::from_secs(330));
    assert_eq!(
        code, 0,
        "the consumer got fewer than the {published} published events"
    );
    assert_eq!(got.len(), published);
    // And the stream holds nothing beyond that: no event stored twice by the failover.
    let rest = Tail::start(
        d.path(),
        "rest",
        &["--input", &input, "--json", "--timeout", "5s"],
    );
    let (code, more) = rest.finish(Duration::from_secs(30));
    assert_eq!(
        (code, more.len()),
        (0, 0),
        "the stream held more than was published"
    );
}

/// `--format yaml`: one YAML document per event, read back with a YAML 1.1 parser (PyYAML,
/// as an operator's script would: it takes unquoted timestamps and `on` for dates and
/// booleans), each the published event.
#[test]
fn yaml_documents_over_nats_parse_to_the_published_events() {
    let nats = Nats::start();
    let d = dir();
    let n = testdata::expected_count(CAPTURE).to_string();
    let tail = Tail::start(
        d.path(),
        "tail",
        &[
            "--input",
            nats.url(),
            "--format",
            "yaml",
            "--count",
            &n,
            "--timeout",
            "60s",
        ],
    );
    tail.wait_subscribed();
    let published = publish(nats.url(), &[]);
    let out = tail.out.clone();
    let (code, _) = tail.finish(Duration::from_secs(70));
    assert_eq!(code, 0, "exit code");
    // The venv scripts/install-test-deps.sh makes (examples/python/requirements.txt).
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let py = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, json, yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    print(json.dumps(d))",
        ])
        .arg(&out)
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let got: Vec<serde_json::Value> = String::from_utf8_lossy(&py.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let want: Vec<serde_json::Value> = published
        .iter()
        .map(|p| serde_json::from_str(p).expect("json"))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the YAML documents differ from the events");
}
