//! The subscribers in `examples/` (Python and shell) run against real servers while the
//! broker publishes a capture: each must print one line per event, on the right subject or
//! topic, in order, and exit 0 after `--count`/`-C` events. The Python ones run in the venv
//! `target/py-venv` that `scripts/install-test-deps.sh` makes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::mqtt::expected_topic;

const CAPTURE: &str = "kresd.fstrm";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(rel: &str) -> PathBuf {
    root().join("examples").join(rel)
}

fn python() -> PathBuf {
    let p = root().join("target/py-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it makes the venv for examples/python)",
        p.display()
    );
    p
}

/// An example subscriber in its own process group (a shell script's children go with it),
/// its standard output and error in files.
struct Example {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Example {
    /// Starts `program args`; with `ready`, waits until its standard error says so.
    fn start(program: &Path, args: &[&str], ready: Option<&str>) -> Example {
        let dir = tempfile::tempdir().expect("tempdir");
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let proc = Proc::spawn(
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).expect("out file"))
                .stderr(std::fs::File::create(&err).expect("err file"))
                .process_group(0),
        );
        let mut ex = Example {
            proc,
            out,
            err,
            _dir: dir,
        };
        if let Some(ready) = ready {
            wait_until(ready, Duration::from_secs(15), || {
                if let Some(st) = ex.proc.try_wait() {
                    panic!(
                        "{} exited at start ({st}):\n{}",
                        program.display(),
                        ex.err_text()
                    );
                }
                ex.err_text().contains(ready)
            });
        }
        ex
    }

    fn err_text(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits (bounded) for a successful exit and returns the lines printed.
    fn finish(mut self) -> Vec<String> {
        let st = self
            .proc
            .wait_within(Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!("the example did not exit within 20 s:\n{}", self.err_text())
            });
        let out = std::fs::read_to_string(&self.out).expect("read output");
        assert!(
            st.success(),
            "example failed ({st}):\n{}\noutput:\n{out}",
            self.err_text()
        );
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // The whole group (a script's redis-cli too); then Proc kills and reaps the child.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
            .stderr(Stdio::null())
            .status();
    }
}

/// A broker reading a unix socket in a temporary directory and writing to `outputs`
/// (`-o URL`, or a configuration file).
struct Setup {
    broker: Broker,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn with_output(url: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dnstap.sock");
        let broker = Broker::start_unix(&sock, None, url);
        Setup {
            broker,
            sock,
            _dir: dir,
        }
    }

    fn with_config(config: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("dnstap.sock");
        let conf = dir.path().join("broker.toml");
        std::fs::write(&conf, config).expect("write broker.toml");
        let input = format!("unix://{}", sock.display());
        let broker = Broker::start(&["-c", conf.to_str().expect("utf-8"), "-i", &input]);
        Setup {
            broker,
            sock,
            _dir: dir,
        }
    }

    fn replay(&self) {
        fstrm_replay_unix(&capture(CAPTURE), &self.sock);
    }
}

fn reference() -> Vec<serde_json::Value> {
    let r = reference_events(&capture(CAPTURE));
    assert_eq!(r.len(), expected_count(CAPTURE));
    r
}

/// What a Python example prints for an event: `<where> <identity> <operation> <qname>
/// <rcode>` (Python prints a JSON null as `None`).
fn summary_line(place: &str, ev: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().map_or("None".to_string(), str::to_string);
    format!(
        "{place} {} {} {} {}",
        s(&ev["dnstap"]["identity"]),
        s(&ev["dnstap"]["operation"]),
        s(&ev["dns"]["qname"]),
        s(&ev["dns"]["rcode"])
    )
}

/// The Python examples' lines are exactly the reference's, in order.
fn assert_summaries(
    got: &[String],
    reference: &[serde_json::Value],
    place: impl Fn(&serde_json::Value) -> String,
) {
    assert_eq!(got.len(), reference.len(), "lines printed");
    for (i, (line, ev)) in got.iter().zip(reference).enumerate() {
        assert_eq!(line, &summary_line(&place(ev), ev), "line {i}");
    }
}

/// The shell examples print `<where> <event JSON>`: the events are the reference's, in
/// order, on the right subject, topic or key.
fn assert_raw(
    got: &[String],
    reference: &[serde_json::Value],
    place: impl Fn(&serde_json::Value) -> String,
) {
    let schema = validator();
    assert_eq!(got.len(), reference.len(), "lines printed");
    for (i, (line, want)) in got.iter().zip(reference).enumerate() {
        let (at, json) = line.split_once(' ').unwrap_or((line, ""));
        let ev: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("line {i} is not '<where> <json>' ({e}): {line}"));
        assert_valid(&schema, &ev);
        assert_eq!(key(&ev), key(want), "event {i} differs");
        assert_eq!(at, place(want), "subject/topic/key of event {i}");
    }
}

fn count() -> String {
    expected_count(CAPTURE).to_string()
}

// --- Python -------------------------------------------------------------------------

#[test]
fn python_nats_subscribe() {
    let nats = Nats::start();
    let s = Setup::with_output(nats.url());
    let ex = Example::start(
        &python(),
        &[
            example("python/nats_subscribe.py").to_str().expect("utf-8"),
            "--url",
            nats.url(),
            "--subject",
            "dnstap.>",
            "--count",
            &count(),
            "--timeout",
            "30",
        ],
        Some("subscribed"),
    );
    // `--count 3` prints three, although the rest keeps arriving while it stops.
    let few = Example::start(
        &python(),
        &[
            example("python/nats_subscribe.py").to_str().expect("utf-8"),
            "--url",
            nats.url(),
            "--count",
            "3",
            "--timeout",
            "30",
        ],
        Some("subscribed"),
    );
    s.replay();
    assert_summaries(&ex.finish(), &reference(), expected_subject);
    assert_summaries(&few.finish(), &reference()[..3], expected_subject);
}

#[test]
fn python_mqtt_subscribe() {
    let mq = Mosquitto::start();
    let s = Setup::with_output(&mq.url());
    s.broker
        .wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    let ex = Example::start(
        &python(),
        &[
            example("python/mqtt_subscribe.py").to_str().expect("utf-8"),
            "--url",
            &mq.url(),
            "--topic",
            "dnstap/#",
            "--count",
            &count(),
            "--timeout",
            "30",
        ],
        Some("subscribed"),
    );
    let few = Example::start(
        &python(),
        &[
            example("python/mqtt_subscribe.py").to_str().expect("utf-8"),
            "--url",
            &mq.url(),
            "--count",
            "3",
            "--timeout",
            "30",
        ],
        Some("subscribed"),
    );
    s.replay();
    assert_summaries(&ex.finish(), &reference(), expected_topic);
    assert_summaries(&few.finish(), &reference()[..3], expected_topic);
}

#[test]
fn python_redis_subscribe_pubsub() {
    let redis = Redis::start();
    let s = Setup::with_output(&redis.url());
    let ex = Example::start(
        &python(),
        &[
            example("python/redis_subscribe.py")
                .to_str()
                .expect("utf-8"),
            "--url",
            &redis.url(),
            "--pattern",
            "dnstap.*",
            "--count",
            &count(),
            "--timeout",
            "30",
        ],
        Some("subscribed"),
    );
    s.replay();
    assert_summaries(&ex.finish(), &reference(), expected_subject);
}

/// Stream mode: the events are already in the stream when the consumer group is made;
/// every one is read once and acknowledged (nothing left pending).
#[test]
fn python_redis_subscribe_stream_group() {
    let redis = Redis::start();
    let s = Setup::with_config(&format!(
        "[outputs.redis]\nurl = \"{}\"\nmode = \"stream\"\nkey = \"dnstap\"\n",
        redis.url()
    ));
    s.replay();
    let n = reference().len();
    s.broker
        .wait_metric("tapbus_published_total", &["output=\"redis\""], n as f64);
    let ex = Example::start(
        &python(),
        &[
            example("python/redis_subscribe.py")
                .to_str()
                .expect("utf-8"),
            "--url",
            &redis.url(),
            "--stream",
            "dnstap",
            "--group",
            "it",
            "--count",
            &count(),
            "--timeout",
            "30",
        ],
        None,
    );
    assert_summaries(&ex.finish(), &reference(), |_| "dnstap".to_string());
    let pending = redis_cli(&redis, &["XPENDING", "dnstap", "it"]);
    assert_eq!(
        pending.lines().next(),
        Some("0"),
        "events left unacknowledged:\n{pending}"
    );
}

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = Command::new(need("redis-cli"))
        .args(["-p", &redis.port().to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// --- shell --------------------------------------------------------------------------

#[test]
fn shell_nats_sub() {
    let nats = Nats::start();
    let s = Setup::with_output(nats.url());
    let server = format!("127.0.0.1:{}", nats.port());
    let ex = Example::start(
        &example("shell/nats_sub.sh"),
        &["-s", &server, "-C", &count(), "dnstap.>"],
        Some("subscribed"),
    );
    s.replay();
    assert_raw(&ex.finish(), &reference(), expected_subject);
}

#[test]
fn shell_mqtt_sub() {
    need("mosquitto_sub");
    let mq = Mosquitto::start();
    let s = Setup::with_output(&mq.url());
    s.broker
        .wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    let ex = Example::start(
        &example("shell/mqtt_sub.sh"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &mq.port().to_string(),
            "-t",
            "dnstap/#",
            "-C",
            &count(),
            "-W",
            "30",
        ],
        None,
    );
    // Subscribed once mosquitto has acknowledged it (it logs every packet).
    wait_until("mqtt_sub.sh subscribed", Duration::from_secs(10), || {
        mq.log_text().contains("Sending SUBACK")
    });
    s.replay();
    assert_raw(&ex.finish(), &reference(), expected_topic);
}

#[test]
fn shell_redis_sub_pubsub() {
    need("redis-cli");
    let redis = Redis::start();
    let s = Setup::with_output(&redis.url());
    let ex = Example::start(
        &example("shell/redis_sub.sh"),
        &["-u", &redis.url(), "-p", "dnstap.*", "-C", &count()],
        Some("subscribed"),
    );
    s.replay();
    assert_raw(&ex.finish(), &reference(), expected_subject);
}

#[test]
fn shell_redis_sub_stream() {
    need("redis-cli");
    let redis = Redis::start();
    let s = Setup::with_config(&format!(
        "[outputs.redis]\nurl = \"{}\"\nmode = \"stream\"\nkey = \"dnstap\"\n",
        redis.url()
    ));
    // Started first: it prints the stream from the start and follows what is added.
    let ex = Example::start(
        &example("shell/redis_sub.sh"),
        &["-u", &redis.url(), "-s", "dnstap", "-C", &count()],
        None,
    );
    s.replay();
    assert_raw(&ex.finish(), &reference(), |_| "dnstap".to_string());
}
