//! Test harness: real servers from the installed binaries on free loopback ports, the
//! broker binary, and subscribers. Every process started here is killed (by its own
//! handle) when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

pub use tapbus_testsupport::pki::write_test_pki;
pub use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::prom;
pub use tapbus_testsupport::servers::{Mosquitto, Nats, Redis};
pub use tapbus_testsupport::{free_port, http_get, need, pause, wait_until, wait_until_async};

/// A test-data file (`testdata/dnstap/NAME`, unpacked if stored compressed).
pub fn capture(name: &str) -> PathBuf {
    tapbus_testsupport::testdata::path(name)
}

pub use tapbus_testsupport::testdata::expected_count;

pub struct Broker {
    pub proc: Proc,
    pub metrics_addr: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts the broker binary and waits for `/health`.
    pub fn start(args: &[&str]) -> Broker {
        Self::start_env(args, &[])
    }

    /// Reads dnstap on the unix socket `sock` (and on `127.0.0.1:TCP` too, given `tcp`) and
    /// publishes to `output` (the URL of `-o`).
    pub fn start_unix(sock: &Path, tcp: Option<u16>, output: &str) -> Broker {
        let mut args = vec!["-i".to_string(), format!("unix://{}", sock.display())];
        if let Some(port) = tcp {
            args.extend(["-i".to_string(), format!("tcp://127.0.0.1:{port}")]);
        }
        args.extend(["-o".to_string(), output.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(&args)
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("broker.log");
        let mport = free_port();
        let metrics_addr = format!("127.0.0.1:{mport}");
        let proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
                .args(args)
                .args(["--metrics-listen", &metrics_addr])
                .envs(env.iter().copied())
                .env("TAPBUS_LOG", "info,tapbus_broker=debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file")),
        );
        let mut b = Broker {
            proc,
            metrics_addr,
            log,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if http_get(&b.metrics_addr, "/health").is_some() {
                break;
            }
            if let Some(st) = b.proc.try_wait() {
                panic!("broker exited at start ({st}):\n{}", b.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "broker not healthy:\n{}",
                b.log_text()
            );
            pause(Duration::from_millis(25));
        }
        b
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics").unwrap_or_default()
    }

    /// Sum of every sample of `name` whose label text contains each of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(), name, labels)
    }

    /// Waits (up to 60 s) until `output` has settled `total` events: `published + dropped
    /// == total` with nothing in flight. Never more than `total`. Returns (published,
    /// dropped).
    pub fn wait_settled(&self, output: &str, total: usize) -> (usize, usize) {
        let label = format!("output=\"{output}\"");
        let t0 = Instant::now();
        loop {
            let m = self.metrics();
            let p = sum_metric(&m, "tapbus_published_total", &[&label]);
            let d = sum_metric(&m, "tapbus_dropped_total", &[&label]);
            let held = sum_metric(&m, "tapbus_inflight", &[&label]);
            assert!(
                p + d <= total as f64,
                "{output}: published {p} + dropped {d} exceeds the {total} events\n{m}"
            );
            if p + d == total as f64 && held == 0.0 {
                return (p as usize, d as usize);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{output}: not settled: published {p} + dropped {d} != {total}, inflight {held}\n{m}\n{}",
                self.log_text()
            );
            pause(Duration::from_millis(50));
        }
    }

    /// Waits (up to 15 s) until the log satisfies `done`; `what` names it in the failure.
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) {
        let t0 = Instant::now();
        while !done(&self.log_text()) {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what} in the log:\n{}",
                self.log_text()
            );
            pause(Duration::from_millis(25));
        }
    }

    /// Waits until the metric reaches `at_least`.
    pub fn wait_metric(&self, name: &str, labels: &[&str], at_least: f64) {
        let t0 = Instant::now();
        loop {
            let v = self.metric(name, labels);
            if v >= at_least {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name}{labels:?} = {v}, expected >= {at_least}\n{}\n{}",
                self.metrics(),
                self.log_text()
            );
            pause(Duration::from_millis(25));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

/// The sum of every sample of `name` carrying each of `labels`, written as in the text
/// (`output="nats"`), in an exposition text.
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    let pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .expect("a label is written name=\"value\"");
            (k, v.trim_matches('"'))
        })
        .collect();
    prom::sum(&prom::Scrape::parse(text), name, &pairs)
}

/// Sends a capture with `fstrm_replay` (Debian fstrm-bin) to a unix socket or TCP port.
pub fn fstrm_replay_unix(file: &Path, sock: &Path) {
    let st = Command::new(need("fstrm_replay"))
        .args(["-t", "protobuf:dnstap.Dnstap", "-r"])
        .arg(file)
        .arg("-u")
        .arg(sock)
        .stdout(Stdio::null())
        .status()
        .expect("fstrm_replay");
    assert!(st.success(), "fstrm_replay failed: {st}");
}

/// [`fstrm_replay_unix`] from async code (on a blocking thread).
pub async fn replay_unix(file: &Path, sock: &Path) {
    let (f, s) = (file.to_path_buf(), sock.to_path_buf());
    tokio::task::spawn_blocking(move || fstrm_replay_unix(&f, &s))
        .await
        .expect("replay");
}

/// [`fstrm_replay_tcp`] from async code (on a blocking thread).
pub async fn replay_tcp(file: &Path, port: u16) {
    let f = file.to_path_buf();
    tokio::task::spawn_blocking(move || fstrm_replay_tcp(&f, port))
        .await
        .expect("replay");
}

pub fn fstrm_replay_tcp(file: &Path, port: u16) {
    let st = Command::new(need("fstrm_replay"))
        .args(["-t", "protobuf:dnstap.Dnstap", "-r"])
        .arg(file)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("fstrm_replay");
    assert!(st.success(), "fstrm_replay failed: {st}");
}

/// A NATS subscriber collecting messages in the background.
pub struct Sub {
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    _client: async_nats::Client,
}

impl Sub {
    pub async fn start(url: &str, subject: &str) -> Sub {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 20)
            .connect(url)
            .await
            .expect("subscriber connect");
        let mut s = client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = s.next().await {
                if tx
                    .send((m.subject.to_string(), m.payload.to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        });
        Sub {
            rx,
            _client: client,
        }
    }

    /// Collects until `n` messages arrived or nothing came for `idle`.
    pub async fn collect(&mut self, n: usize, idle: Duration) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(idle, self.rx.recv()).await {
                Ok(Some((subj, payload))) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&payload).unwrap_or_else(|e| {
                            panic!(
                                "event is not JSON ({e}): {}",
                                String::from_utf8_lossy(&payload)
                            )
                        });
                    out.push((subj, v));
                }
                _ => break,
            }
        }
        out
    }
}

/// The schema validator for events.
pub fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(tapbus_proto::event::SCHEMA).expect("schema json");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

pub fn assert_valid(v: &jsonschema::Validator, ev: &serde_json::Value) {
    if let Err(e) = v.validate(ev) {
        panic!("event does not match the schema: {e}\n{ev}");
    }
}

/// The events the broker makes from a capture, decoded in-process (the reference the
/// network paths are compared with).
pub fn reference_events(file: &Path) -> Vec<serde_json::Value> {
    tapbus_testsupport::testdata::events_in(file)
        .filter_map(|e| serde_json::from_slice(&e).ok())
        .collect()
}

/// What must be identical between an event received over the bus and the reference.
pub fn key(ev: &serde_json::Value) -> String {
    let mut ev = ev.clone();
    if let Some(d) = ev.get_mut("dnstap").and_then(|d| d.as_object_mut()) {
        d.remove("peer-name");
    }
    ev.to_string()
}

/// The data frames of a capture.
pub fn data_frames(file: &Path) -> Vec<bytes::Bytes> {
    let bytes = std::fs::read(file).expect("capture");
    tapbus_proto::fstrm::decode_all(&bytes, tapbus_proto::fstrm::DEFAULT_MAX_DATA_FRAME)
        .0
        .into_iter()
        .filter_map(|f| match f {
            tapbus_proto::fstrm::Frame::Data(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Plays a bidirectional Frame Streams writer (what a DNS server does): READY, wait for
/// ACCEPT, START, data, STOP, wait for FINISH. Returns the ACCEPT received; any deviation
/// of the broker fails the test.
pub async fn write_stream<S>(
    s: &mut S,
    frames: &[bytes::Bytes],
) -> tapbus_testsupport::fstrm::Control
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tapbus_testsupport::fstrm::write_stream(s, frames)
        .await
        .unwrap_or_else(|e| panic!("dnstap writer: {e}"))
}

/// The default NATS subject (and Redis channel) of an event: `dnstap.<identity>.<operation>`,
/// with the identity made one token as the broker does.
pub fn expected_subject(ev: &serde_json::Value) -> String {
    let id: String = ev["dnstap"]["identity"]
        .as_str()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let id = if id.is_empty() {
        "unknown".to_string()
    } else {
        id
    };
    let op = ev["dnstap"]["operation"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    format!("dnstap.{id}.{op}")
}

/// Writes `broker.toml` in `dir`: a unix input at `sock` and one output table
/// `[outputs.<output>]` with `body`.
pub fn write_broker_config(dir: &Path, sock: &Path, output: &str, body: &str) -> PathBuf {
    let p = dir.join("broker.toml");
    std::fs::write(
        &p,
        format!(
            "[inputs.local]\nurl = \"unix://{}\"\n\n[outputs.{output}]\n{body}",
            sock.display()
        ),
    )
    .expect("write broker.toml");
    p
}
