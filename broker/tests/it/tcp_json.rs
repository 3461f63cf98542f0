//! `tcp+json://`: JSON lines over TCP to a line-counting receiver (what Logstash's `tcp`
//! input with `json_lines` does). Every event arrives as one line; a receiver that goes
//! away mid-replay leaves the books exact (published + dropped == events, the receiver
//! got at most what was published), and bad settings are refused naming the key.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// Accepts connections on a thread and keeps every line; stops reading (and closes
/// everything) after `stop_after` lines, if given.
struct Receiver {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(stop_after: Option<usize>) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let mut v = keep.lock().expect("lines");
                    v.push(line);
                    if stop_after.is_some_and(|n| v.len() >= n) {
                        // Gone: the listener and the connection close with this thread.
                        return;
                    }
                }
            }
        });
        Receiver { port, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }
}

/// The `output closed` line's `field=N`.
fn closing(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("output closed"))
        .unwrap_or_else(|| panic!("no closing line in:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

fn replay(port: u16, capture_name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .env(
            "TAPBUS_INPUTS__F__URL",
            format!("file://{}", capture(capture_name).display()),
        )
        .env(
            "TAPBUS_OUTPUTS__COLLECTOR__URL",
            format!("tcp+json://127.0.0.1:{port}"),
        )
        .env("TAPBUS_METRICS_LISTEN", "")
        .env("TAPBUS_LOG", "info")
        .envs(env.iter().copied())
        .output()
        .expect("run broker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_event_arrives_as_one_json_line() {
    let r = Receiver::start(None);
    let (code, log) = replay(r.port, "unbound.fstrm", &[]);
    assert_eq!(code, Some(0), "{log}");
    let reference = reference_events(&capture("unbound.fstrm"));
    wait_until("every line", Duration::from_secs(10), || {
        r.lines().len() >= reference.len()
    });
    let got: Vec<serde_json::Value> = r
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(got.len(), reference.len());
    for (g, w) in got.iter().zip(&reference) {
        assert_eq!(key(g), key(w));
    }
    assert_eq!(closing(&log, "published"), reference.len() as u64);
    assert_eq!(closing(&log, "dropped"), 0);
}

/// A file replay waits for its outputs (it never drops), so with the receiver gone for
/// good the broker holds on until it is stopped; SIGTERM then settles the books.
#[test]
fn a_receiver_gone_mid_replay_leaves_the_books_exact() {
    let r = Receiver::start(Some(1000));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("broker.log");
    let mut broker = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .env(
                "TAPBUS_INPUTS__F__URL",
                format!("file://{}", capture("bulk-100k.fstrm").display()),
            )
            .env(
                "TAPBUS_OUTPUTS__COLLECTOR__URL",
                format!("tcp+json://127.0.0.1:{}", r.port),
            )
            .env("TAPBUS_OUTPUTS__COLLECTOR__RECONNECT_MAX", "200ms")
            .env("TAPBUS_DRAIN_TIMEOUT", "2s")
            .env("TAPBUS_METRICS_LISTEN", "")
            .env("TAPBUS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        "the output lost its receiver",
        Duration::from_secs(60),
        || text().contains("connect failed"),
    );
    let st = broker.terminate();
    let log = text();
    assert!(st.code().is_some(), "{log}");
    let events = closing(&log, "events");
    let (published, dropped) = (closing(&log, "published"), closing(&log, "dropped"));
    assert_eq!(published + dropped, events, "{log}");
    assert!(dropped > 0, "{log}");
    let received = r.lines().len() as u64;
    assert!(
        (1000..=published).contains(&received),
        "received {received}, published {published}"
    );
    assert!(log.contains("write failed"), "{log}");
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    for (env, want) in [
        (
            vec![("TAPBUS_OUTPUTS__X__URL", "tcp+json://nohost")],
            "outputs.x.url",
        ),
        (
            vec![
                ("TAPBUS_OUTPUTS__X__URL", "tcp+json://127.0.0.1:5000"),
                ("TAPBUS_OUTPUTS__X__USERNAME", "u"),
            ],
            "outputs.x",
        ),
        (
            vec![
                ("TAPBUS_OUTPUTS__X__URL", "nats://127.0.0.1:4222"),
                ("TAPBUS_OUTPUTS__X__RECONNECT_MIN", "1s"),
            ],
            "outputs.x.reconnect_min: only applies to dnstap+tcp, dnstap+unix and tcp+json outputs",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["--check", "-i", "file:///dev/null"])
            .envs(env.iter().copied())
            .output()
            .expect("run broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(want), "{env:?}: {err}");
    }
}
