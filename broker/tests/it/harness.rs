//! Test harness: real servers from the installed binaries on free loopback ports, the
//! broker binary, and subscribers. Every process started here is killed (by its own
//! handle) when its guard drops.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

/// A test-data file (`testdata/dnstap/NAME`, unpacked if stored compressed).
pub fn capture(name: &str) -> PathBuf {
    tapbus_testsupport::testdata::path(name)
}

pub use tapbus_testsupport::testdata::expected_count;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Fails the test with a clear message when a needed program is missing.
pub fn need(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p;
        }
    }
    panic!("{program} is not installed: run scripts/install-test-deps.sh (apt-get install -y ...)");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Sends SIGTERM and waits up to `limit` for the exit; `None` if it did not exit.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Stops the process the way `kill PID` does (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Nats {
    _proc: Proc,
    pub url: String,
}

impl Nats {
    pub fn start() -> Nats {
        Self::start_on(free_port())
    }
}

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

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("broker.log");
        let mport = free_port();
        let metrics_addr = format!("127.0.0.1:{mport}");
        let child = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(args)
            .args(["--metrics-listen", &metrics_addr])
            .envs(env.iter().copied())
            .env("TAPBUS_LOG", "info,tapbus_broker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn broker");
        let mut b = Broker {
            proc: Proc { child },
            metrics_addr,
            log,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if http_get(&b.metrics_addr, "/health").is_some() {
                break;
            }
            if let Ok(Some(st)) = b.proc.child.try_wait() {
                panic!("broker exited at start ({st}):\n{}", b.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "broker not healthy:\n{}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
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
            std::thread::sleep(Duration::from_millis(50));
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
            std::thread::sleep(Duration::from_millis(25));
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
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }
}

pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && labels.iter().all(|x| series.contains(x)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A minimal HTTP/1.0 GET (no client library needed for two local endpoints).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
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
    let bytes = std::fs::read(file).expect("capture");
    let (frames, _) =
        tapbus_proto::fstrm::decode_all(&bytes, tapbus_proto::fstrm::DEFAULT_MAX_DATA_FRAME);
    let mut out = Vec::new();
    frames
        .into_iter()
        .filter_map(|f| match f {
            tapbus_proto::fstrm::Frame::Data(d) => Some(d),
            _ => None,
        })
        .filter_map(|d| {
            out.clear();
            tapbus_proto::event::encode(d, "ref", &mut out).ok()?;
            serde_json::from_slice(&out).ok()
        })
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
/// ACCEPT, START, data, STOP, wait for FINISH. Returns the ACCEPT received.
pub async fn write_stream<S>(
    s: &mut S,
    frames: &[bytes::Bytes],
) -> tapbus_proto::fstrm::ControlFrame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tapbus_proto::fstrm::{ControlFrame, ControlType, DNSTAP_CONTENT_TYPE, encode_data};
    use tokio::io::AsyncWriteExt;
    let mut b = bytes::BytesMut::new();
    ControlFrame::new(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE)).encode(&mut b);
    s.write_all(&b).await.expect("write READY");
    let accept = read_control(s).await;
    assert_eq!(accept.kind, ControlType::Accept);
    b.clear();
    ControlFrame::new(ControlType::Start, Some(DNSTAP_CONTENT_TYPE)).encode(&mut b);
    for f in frames {
        encode_data(f, &mut b);
    }
    ControlFrame::new(ControlType::Stop, None).encode(&mut b);
    s.write_all(&b).await.expect("write frames");
    s.flush().await.expect("flush");
    let finish = read_control(s).await;
    assert_eq!(finish.kind, ControlType::Finish);
    accept
}

/// Reads one control frame (with a timeout).
pub async fn read_control<S>(s: &mut S) -> tapbus_proto::fstrm::ControlFrame
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tapbus_proto::fstrm::{Frame, FrameDecoder};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;
    let mut dec = FrameDecoder::new(4096);
    let mut buf = bytes::BytesMut::new();
    let read = async {
        loop {
            if let Some(f) = dec.decode(&mut buf).expect("valid control frame") {
                match f {
                    Frame::Control(c) => return c,
                    other => panic!("expected a control frame, got {other:?}"),
                }
            }
            let n = s.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "peer closed before sending a control frame");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("control frame within 10s")
}

impl Nats {
    /// Starts nats-server on a given port (to restart one that was stopped).
    pub fn start_on(port: u16) -> Nats {
        Self::start_on_with(port, &[])
    }

    /// Starts nats-server on a free port with extra arguments (e.g. `["-js", "-sd", dir]`
    /// or `["-c", "server.conf"]`).
    pub fn start_with(args: &[&str]) -> Nats {
        Self::start_on_with(free_port(), args)
    }

    pub fn start_on_with(port: u16, args: &[&str]) -> Nats {
        let child = Command::new(need("nats-server"))
            .args(args)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let p = Proc { child };
        wait_until("nats-server", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats {
            _proc: p,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// Stops the server with SIGTERM (it closes its connections and stores) and waits.
    pub fn terminate(mut self) {
        self._proc.terminate();
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}

/// Writes a throw-away PKI into `dir`: `ca.pem`, `server.pem` + `server.key` (for
/// `localhost` and `127.0.0.1`) and `client.pem` + `client.key`, all signed by the CA.
pub fn write_test_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let skey = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&skey, &ca)
        .expect("server cert");
    let ckey = KeyPair::generate().expect("key");
    let client = CertificateParams::new(vec!["dns-server.test".to_string()])
        .expect("params")
        .signed_by(&ckey, &ca)
        .expect("client cert");
    for (f, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", skey.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", ckey.serialize_pem()),
    ] {
        std::fs::write(dir.join(f), pem).expect("write pki file");
    }
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
