//! Raw dnstap outputs: `dnstap+file://` (record, rotation) and `dnstap+tcp://` /
//! `dnstap+unix://` (relay), read back by the reference tools: golang-dnstap's `dnstap -r`,
//! `fstrm_dump` and `fstrm_capture` (Debian golang-github-dnstap-golang-dnstap-cli,
//! fstrm-bin). Every frame must come out byte for byte as it went in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use crate::harness::*;

/// Runs the broker over a capture file (`file://` input) into `output`; returns its log.
fn record(input: &Path, output: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["-i", &format!("file://{}", input.display()), "-o", output])
        .env("TAPBUS_METRICS_LISTEN", "")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run broker");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "broker: {log}");
    log
}

/// `dnstap -r FILE -j`: one JSON line per message.
fn dnstap_json(file: &Path) -> Vec<String> {
    let out = Command::new(need("dnstap"))
        .arg("-r")
        .arg(file)
        .arg("-j")
        .output()
        .expect("dnstap -r");
    assert!(
        out.status.success(),
        "dnstap -r {}: {out:?}",
        file.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `fstrm_dump FILE`: the data frame count it prints, and whether it saw START and STOP.
fn fstrm_dump(file: &Path) -> (usize, bool, bool) {
    let out = Command::new(need("fstrm_dump"))
        .arg(file)
        .output()
        .expect("fstrm_dump");
    assert!(
        out.status.success(),
        "fstrm_dump {}: {out:?}",
        file.display()
    );
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (
        text.lines().filter(|l| l.contains("Data frame")).count(),
        text.contains("FSTRM_CONTROL_START") && text.contains("protobuf:dnstap.Dnstap"),
        text.contains("FSTRM_CONTROL_STOP"),
    )
}

/// The file is a clean unidirectional capture (START with the dnstap type ... STOP, no
/// trailing bytes); returns its data frames.
fn clean_capture(file: &Path) -> Vec<Bytes> {
    use tapbus_proto::fstrm::{ControlType, Frame, decode_all};
    let bytes = std::fs::read(file).expect("read capture");
    let (frames, end) = decode_all(&bytes, 1 << 20);
    end.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        matches!(frames.first(), Some(Frame::Control(c)) if c.kind == ControlType::Start && c.content_types == [Bytes::from_static(b"protobuf:dnstap.Dnstap")]),
        "{}: no START with the dnstap content type",
        file.display()
    );
    assert!(
        matches!(frames.last(), Some(Frame::Control(c)) if c.kind == ControlType::Stop),
        "{}: no STOP at the end",
        file.display()
    );
    data_frames(file)
}

fn rotated(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".fstrm"))
        })
        .collect();
    v.sort();
    v
}

/// `dnstap -w FILE` as tapbus: the recorded file reads back with `dnstap -r` to the same
/// messages as the input capture, `fstrm_dump` reads it, and its data frames are the
/// input's, byte for byte. The JSON is never built (no output needs it).
#[test]
fn record_writes_a_capture_the_reference_tools_read_byte_for_byte() {
    for name in ["unbound.fstrm", "bind-resolver.fstrm", "dnsdist-tcp.fstrm"] {
        let input = capture(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("rec.fstrm");
        let log = record(&input, &format!("dnstap+file://{}", out.display()), &[]);
        let n = expected_count(name);
        assert!(
            log.contains(&format!("events={n} published={n} dropped=0")),
            "{name}: {log}"
        );
        assert_eq!(
            clean_capture(&out),
            data_frames(&input),
            "{name}: data frames differ"
        );
        let (frames, start, stop) = fstrm_dump(&out);
        assert_eq!((frames, start, stop), (n, true, true), "{name}: fstrm_dump");
        let got = dnstap_json(&out);
        assert_eq!(got.len(), n, "{name}: dnstap -r count");
        assert_eq!(got, dnstap_json(&input), "{name}: dnstap -r differs");
    }
}

/// An output filter applies to a raw output as to every other: only the matching frames
/// are recorded, the rest counted as filtered, and a JSON output beside it is unchanged.
#[test]
fn a_filtered_record_keeps_only_the_matching_frames() {
    let name = "unbound.fstrm";
    let input = capture(name);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("responses.fstrm");
    let log = record(
        &input,
        &format!(
            "dnstap+file://{}?filter=operation%3DCLIENT_RESPONSE",
            out.display()
        ),
        &[],
    );
    let expected: Vec<serde_json::Value> = reference_events(&input);
    let keep: Vec<bool> = expected
        .iter()
        .map(|e| e["dnstap"]["operation"] == "CLIENT_RESPONSE")
        .collect();
    let want: Vec<Bytes> = data_frames(&input)
        .into_iter()
        .zip(&keep)
        .filter_map(|(f, k)| k.then_some(f))
        .collect();
    assert!(!want.is_empty() && want.len() < expected.len());
    assert_eq!(clean_capture(&out), want);
    let n = expected.len();
    assert!(
        log.contains(&format!(
            "events={n} published={} dropped=0 filtered={}",
            want.len(),
            n - want.len()
        )),
        "{log}"
    );
}

/// Rotation by size: at most `keep` rotated files stay, each a clean capture; with a `keep`
/// large enough, the files in name order hold every frame exactly once, in order.
#[test]
fn rotation_keeps_keep_files_each_a_capture_holding_every_frame_once() {
    let name = "bind-resolver.fstrm";
    let input = capture(name);
    let frames = data_frames(&input);
    let total: usize = frames.iter().map(|f| f.len() + 4).sum();
    let size = total / 7;
    for keep in [1000, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("dns.fstrm");
        record(
            &input,
            &format!(
                "dnstap+file://{}?rotate_size={size}&keep={keep}",
                out.display()
            ),
            &[],
        );
        let files = rotated(dir.path(), "dns");
        let mut got = Vec::new();
        for f in &files {
            let (n, start, stop) = fstrm_dump(f);
            assert!(start && stop, "{}", f.display());
            let d = clean_capture(f);
            assert_eq!(n, d.len());
            got.extend(d);
        }
        if out.exists() {
            got.extend(clean_capture(&out));
        }
        if keep == 1000 {
            assert!(files.len() >= 6, "{files:?}");
            assert_eq!(got, frames, "every frame exactly once, in order");
        } else {
            assert_eq!(files.len(), 3, "{files:?}");
            // The newest frames, in order: a tail of the input.
            assert!(
                frames.ends_with(&got),
                "the kept files are not the newest frames"
            );
            assert!(got.len() >= 2 * frames.len() / 7);
        }
    }
}

/// fstrm_capture as the receiver, on a unix socket or on TCP.
struct Capture {
    proc: Proc,
    out: PathBuf,
}

impl Capture {
    fn start(listen: &[String], out: &Path) -> Capture {
        let proc = Proc::spawn(
            Command::new(need("fstrm_capture"))
                .args(["-t", "protobuf:dnstap.Dnstap"])
                .args(listen)
                .arg("-w")
                .arg(out)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Capture {
            proc,
            out: out.to_path_buf(),
        }
    }

    /// SIGTERM: fstrm_capture closes its file (STOP, flushed) and exits.
    fn stop(mut self) -> Vec<Bytes> {
        self.proc.signal("TERM");
        assert!(
            self.proc.wait_within(Duration::from_secs(10)).is_some(),
            "fstrm_capture did not exit"
        );
        data_frames(&self.out)
    }
}

/// Bytes queued in the receive buffers of sockets bound to `port` on loopback (from
/// /proc/net/tcp): 0 once the receiver read all it was sent.
fn unread(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            (local_port == port).then_some(rx)
        })
        .sum()
}

/// A relay into `fstrm_capture -u SOCK`: the bidirectional handshake, the same bytes, and a
/// clean close (STOP answered with FINISH) when the broker ends.
#[test]
fn relay_to_fstrm_capture_on_a_unix_socket_carries_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("capture.sock");
    let out = dir.path().join("captured.fstrm");
    let cap = Capture::start(&["-u".into(), sock.display().to_string()], &out);
    wait_until("fstrm_capture listening", Duration::from_secs(10), || {
        sock.exists()
    });
    let name = "dnsdist.fstrm";
    let input = capture(name);
    let n = expected_count(name);
    let log = record(&input, &format!("dnstap+unix://{}", sock.display()), &[]);
    assert!(
        log.contains(&format!("events={n} published={n} dropped=0")),
        "{log}"
    );
    assert!(log.contains("STOP answered with FINISH"), "{log}");
    assert_eq!(cap.stop(), data_frames(&input));
}

/// The receiver restarts: fstrm_capture is stopped after a first replay, frames of a second
/// replay wait in the output's queue while it is down, and a new fstrm_capture on the same
/// port gets them. Every frame arrives exactly once over the two captures, and
/// published + dropped == events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_the_receiver_restarting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = [
        "-a".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        port.to_string(),
    ];
    let cap = Capture::start(&listen, &dir.path().join("one.fstrm"));
    let sock = dir.path().join("dnstap.sock");
    let url = format!("dnstap+tcp://127.0.0.1:{port}?reconnect_min=50ms&reconnect_max=200ms");
    let wait_listen = || {
        wait_until("fstrm_capture listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    };
    wait_listen();
    let broker = Broker::start_unix(&sock, None, &url);
    let (a, b) = (capture("unbound.fstrm"), capture("kresd.fstrm"));
    let (na, nb) = (
        expected_count("unbound.fstrm"),
        expected_count("kresd.fstrm"),
    );
    replay_unix(&a, &sock).await;
    broker.wait_metric(
        "tapbus_published_total",
        &["output=\"dnstap_tcp\""],
        na as f64,
    );
    // fstrm_capture read everything it was sent, then stops.
    wait_until("fstrm_capture read all", Duration::from_secs(10), || {
        unread(port) == 0
    });
    let first = cap.stop();
    wait_until(
        "the relay saw the receiver go",
        Duration::from_secs(10),
        || broker.metric("tapbus_output_up", &["output=\"dnstap_tcp\""]) == 0.0,
    );
    replay_unix(&b, &sock).await;
    let cap = Capture::start(&listen, &dir.path().join("two.fstrm"));
    let (published, dropped) = broker.wait_settled("dnstap_tcp", na + nb);
    assert_eq!((published, dropped), (na + nb, 0));
    let mut broker = broker;
    broker.proc.terminate();
    let log = broker.log_text();
    assert!(log.contains("STOP answered with FINISH"), "{log}");
    let second = cap.stop();
    let mut want = data_frames(&a);
    want.extend(data_frames(&b));
    let mut got = first;
    got.extend(second);
    assert_eq!(got.len(), published, "frames captured == published");
    assert_eq!(got, want, "every frame once, in order");
}

/// Bad raw output settings are refused at start, naming the key.
#[test]
fn bad_raw_output_settings_are_refused_naming_the_key() {
    for (url, env, key) in [
        (
            "dnstap+file:///tmp/x.fstrm?keep=0",
            None,
            "outputs.dnstap_file.keep",
        ),
        (
            "dnstap+file:///tmp/x.fstrm?rotate=1",
            None,
            "outputs.dnstap_file.url",
        ),
        (
            "dnstap+file:///tmp/x.fstrm?rotate_size=0",
            None,
            "outputs.dnstap_file.rotate_size",
        ),
        ("dnstap+file://x.fstrm", None, "outputs.dnstap_file.url"),
        (
            "dnstap+tcp://127.0.0.1:6000?keep=3",
            None,
            "outputs.dnstap_tcp.keep",
        ),
        (
            "dnstap+unix:///run/x.sock?reconnect_min=2s&reconnect_max=1s",
            None,
            "outputs.dnstap_unix.reconnect_max",
        ),
        (
            "dnstap+tcp://127.0.0.1:6000",
            Some(("TAPBUS_OUTPUTS__DNSTAP_TCP__SUBJECT", "x")),
            "outputs.dnstap_tcp.subject",
        ),
        (
            "nats://127.0.0.1:4222",
            Some(("TAPBUS_OUTPUTS__NATS__ROTATE_AGE", "1h")),
            "outputs.nats.rotate_age",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"));
        cmd.args(["-i", "file:///dev/null", "-o", url]);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert_eq!(
            err.matches(key).count(),
            1,
            "{url}: {key} not named once in {err}"
        );
    }
}

/// `--check` shows what a raw output resolved to, its keys included.
#[test]
fn check_shows_the_raw_outputs_and_their_keys() {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["-i", "tcp://127.0.0.1:6000"])
        .args([
            "-o",
            "dnstap+file:///var/lib/tapbus/dns.fstrm?rotate_size=1048576&rotate_age=1h&keep=5",
            "-o",
            "dnstap+unix:///run/relay.sock?reconnect_max=2s",
            "--check",
        ])
        .output()
        .expect("run broker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dnstap_file=dnstap+file:///var/lib/tapbus/dns.fstrm keep=5 rotate_size=1048576 rotate_age=1h"),
        "{text}"
    );
    assert!(
        text.contains(
            "dnstap_unix=dnstap+unix:///run/relay.sock reconnect_min=100ms reconnect_max=2s"
        ),
        "{text}"
    );
}

/// The receiver is killed (SIGKILL) in the middle of a 100,000-frame replay and started
/// again: the relay reconnects and goes on; published + dropped == events exactly; the
/// frames captured are input frames, in order, none twice; only frames the dead receiver
/// had not read are missing (at most what the socket buffers held), each counted published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_the_receiver_killed_mid_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = [
        "-a".to_string(),
        "127.0.0.1".to_string(),
        "-p".to_string(),
        port.to_string(),
    ];
    let mut cap = Capture::start(&listen, &dir.path().join("one.fstrm"));
    wait_until("fstrm_capture listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let sock = dir.path().join("dnstap.sock");
    let url = format!(
        "dnstap+tcp://127.0.0.1:{port}?reconnect_min=20ms&reconnect_max=100ms&queue=200000"
    );
    let broker = Broker::start_unix(&sock, None, &url);
    let input = capture("bulk-100k.fstrm");
    let n = expected_count("bulk-100k.fstrm");
    let replay = {
        let (i, s) = (input.clone(), sock.clone());
        tokio::task::spawn_blocking(move || fstrm_replay_unix(&i, &s))
    };
    broker.wait_metric(
        "tapbus_published_total",
        &["output=\"dnstap_tcp\""],
        (n / 5) as f64,
    );
    cap.proc.kill();
    let first_part = data_frames(&cap.out);
    let cap = Capture::start(&listen, &dir.path().join("two.fstrm"));
    replay.await.expect("replay");
    let (published, dropped) = broker.wait_settled("dnstap_tcp", n);
    assert_eq!(published + dropped, n);
    wait_until("fstrm_capture read all", Duration::from_secs(10), || {
        unread(port) == 0
    });
    let resent = broker.metric("tapbus_resent_total", &["output=\"dnstap_tcp\""]);
    let mut broker = broker;
    broker.proc.terminate();
    let second = cap.stop();
    let want = data_frames(&input);
    // In order, none twice: the captured frames are a subsequence of the input.
    let mut it = want.iter();
    for f in first_part.iter().chain(&second) {
        assert!(it.any(|w| w == f), "a frame out of order or twice");
    }
    let got = first_part.len() + second.len();
    assert!(got <= published, "captured {got} > published {published}");
    // Lost only what the killed receiver had not read: bounded by the socket buffers.
    let lost = published - got;
    assert!(lost < 20_000, "{lost} frames lost");
    eprintln!(
        "killed mid-replay: published {published}, dropped {dropped}, captured {got} ({} + {}), lost with the receiver {lost}, resent {resent}",
        first_part.len(),
        second.len(),
    );
}

/// No receiver at all: a replay into a relay ends at once (no drain deadline waited out),
/// every frame counted as dropped, and the exit status says the replay is incomplete.
#[test]
fn a_relay_without_receiver_drops_and_counts_at_shutdown() {
    let name = "kresd.fstrm";
    let n = expected_count(name);
    let port = free_port();
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["-i", &format!("file://{}", capture(name).display())])
        .args(["-o", &format!("dnstap+tcp://127.0.0.1:{port}?queue=100000")])
        .env("TAPBUS_METRICS_LISTEN", "")
        .output()
        .expect("run broker");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(
        log.contains(&format!("events={n} published=0 dropped={n}")),
        "{log}"
    );
}
