//! The MQTT output against a real mosquitto: every event arrives with the right topic, in
//! order (3.1.1 QoS 0 and 5 QoS 1), and an event over max_packet_size is dropped and
//! counted without tearing the connection down. The subscriber is `mosquitto_sub`, the
//! debugging tool an operator would reach for.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// `mosquitto_sub -v` on `dnstap/#`, exiting after `count` messages or `timeout_s` seconds.
pub(crate) struct MosquittoSub {
    proc: Proc,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl MosquittoSub {
    pub(crate) fn start(
        broker: &Mosquitto,
        count: usize,
        version: &str,
        qos: u8,
        timeout_s: u32,
    ) -> Self {
        let id = format!("tapbus-test-sub-{}", broker.port());
        // To a file, not a pipe: a pipe nobody reads while the test waits would fill and
        // stall the subscriber.
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("sub.out");
        let proc = Proc::spawn(
            Command::new(need("mosquitto_sub"))
                .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
                .args(["-t", "dnstap/#", "-v", "-i", &id, "-V", version])
                .args(["-q", &qos.to_string()])
                .args(["-C", &count.to_string(), "-W", &timeout_s.to_string()])
                .stdout(std::fs::File::create(&out).expect("sub.out"))
                .stderr(Stdio::null()),
        );
        // Subscribed once the server has acknowledged it (mosquitto logs every packet).
        let ack = format!("Sending SUBACK to {id}");
        wait_until("mosquitto_sub subscribed", Duration::from_secs(10), || {
            broker.log_text().contains(&ack)
        });
        MosquittoSub {
            proc,
            out,
            _dir: dir,
        }
    }

    /// Waits for the subscriber to exit (count reached or timeout) and parses its lines.
    pub(crate) fn finish(mut self, within: Duration) -> Vec<(String, String)> {
        wait_until("mosquitto_sub to exit", within, || !self.proc.is_running());
        let out = std::fs::read_to_string(&self.out).expect("read mosquitto_sub output");
        out.lines()
            .map(|l| {
                let (topic, payload) = l.split_once(' ').unwrap_or((l, ""));
                (topic.to_string(), payload.to_string())
            })
            .collect()
    }
}

pub(crate) fn expected_topic(ev: &serde_json::Value) -> String {
    let id = ev["dnstap"]["identity"].as_str().unwrap_or("");
    let mut id: String = id
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if id.starts_with('$') {
        id.replace_range(..1, "_");
    }
    if id.is_empty() {
        id = "unknown".into();
    }
    let op = ev["dnstap"]["operation"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    format!("dnstap/{id}/{op}")
}

fn parse(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("payload is not JSON ({e}): {payload}"))
}

fn replay(file: &Path, sock: &Path) {
    fstrm_replay_unix(file, sock)
}

/// Checks that `got` is exactly `reference` (same events, same order, right topics).
fn assert_same(name: &str, got: &[(String, String)], reference: &[serde_json::Value]) {
    let schema = validator();
    assert_eq!(got.len(), reference.len(), "{name}: messages received");
    for (i, ((topic, payload), want)) in got.iter().zip(reference).enumerate() {
        let ev = parse(payload);
        assert_valid(&schema, &ev);
        assert_eq!(key(&ev), key(want), "{name}: message {i} differs");
        assert_eq!(topic, &expected_topic(&ev), "{name}: topic of message {i}");
    }
}

/// Waits until the broker's MQTT output is up, subscribes with `mosquitto_sub` (protocol
/// `proto`, QoS `qos`) on `mq`, replays the capture `name` into `sock` and checks that every
/// event arrives, in order, on its topic; then that the broker published them all.
fn assert_delivers(broker: &Broker, mq: &Mosquitto, sock: &Path, name: &str, proto: &str, qos: u8) {
    broker.wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    let reference = reference_events(&capture(name));
    assert_eq!(reference.len(), expected_count(name));
    let sub = MosquittoSub::start(mq, reference.len(), proto, qos, 15);
    replay(&capture(name), sock);
    let got = sub.finish(Duration::from_secs(20));
    assert_same(name, &got, &reference);
    broker.wait_metric(
        "tapbus_published_total",
        &["output=\"mqtt\""],
        reference.len() as f64,
    );
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
}

/// MQTT 3.1.1, QoS 0, from the command line: the capture arrives complete and in order.
#[test]
fn capture_arrives_on_mqtt() {
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, &mq.url());
    assert_delivers(&broker, &mq, &sock, "kresd.fstrm", "mqttv311", 0);
    assert_eq!(broker.metric("tapbus_output_up", &["output=\"mqtt\""]), 1.0);
    let log = broker.log_text();
    assert!(log.contains("MQTT connected"), "{log}");
    assert!(!log.contains("WARN"), "no warnings expected:\n{log}");
}

/// MQTT 5 with QoS 1, from a configuration file: everything arrives.
#[test]
fn mqtt5_qos1_from_config_file() {
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_mqtt(
        dir.path(),
        &sock,
        &format!(
            "url = \"{}\"\nqos = 1\nmqtt_version = \"5\"\nclient_id = \"tapbus-it-v5\"\n",
            mq.url()
        ),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    assert_delivers(&broker, &mq, &sock, "unbound.fstrm", "mqttv5", 1);
    // The server saw an MQTT 5 client with our id publishing at QoS 1.
    let log = mq.log_text();
    assert!(
        log.contains("tapbus-it-v5") && log.contains("p5"),
        "mosquitto did not log an MQTT 5 connection from tapbus-it-v5:\n{log}"
    );
    assert!(
        log.contains("Received PUBLISH from tapbus-it-v5 (d0, q1"),
        "no QoS 1 publish in the mosquitto log"
    );
}

/// An event over max_packet_size is dropped and counted; the rest arrive and the
/// connection stays up.
#[test]
fn oversize_events_are_dropped_and_counted() {
    const LIMIT: usize = 2048;
    let name = "bind-resolver.fstrm";
    let reference = reference_events(&capture(name));
    // The broker's JSON differs from the reference only by its peer-name: sizes are taken
    // from the reference, with a margin.
    let size = |ev: &serde_json::Value| ev.to_string().len();
    let big = reference.iter().filter(|ev| size(ev) > LIMIT + 100).count();
    let ambiguous = reference
        .iter()
        .filter(|ev| (LIMIT - 300..=LIMIT + 100).contains(&size(ev)))
        .count();
    assert!(big > 0, "{name} has no event over {LIMIT} bytes");
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_mqtt(
        dir.path(),
        &sock,
        &format!("url = \"{}\"\nmax_packet_size = {LIMIT}\n", mq.url()),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    let sub = MosquittoSub::start(&mq, reference.len(), "mqttv311", 0, 6);
    replay(&capture(name), &sock);
    broker.wait_metric("tapbus_events_total", &[], reference.len() as f64);
    let dropped_metric = &["output=\"mqtt\"", "reason=\"too_large\""];
    broker.wait_metric("tapbus_dropped_total", dropped_metric, big as f64);
    // Fewer messages than requested arrive, so the subscriber ends at its -W timeout.
    let got = sub.finish(Duration::from_secs(15));
    let dropped = broker.metric("tapbus_dropped_total", dropped_metric) as usize;
    assert!(
        (big..=big + ambiguous).contains(&dropped),
        "dropped {dropped}, expected {big} (+ up to {ambiguous} near the limit)"
    );
    assert_eq!(got.len() + dropped, reference.len(), "received + dropped");
    assert_eq!(
        broker.metric("tapbus_published_total", &["output=\"mqtt\""]) as usize,
        got.len()
    );
    // What arrived is the reference minus the big events, in order.
    let schema = validator();
    let mut want = reference.iter();
    for (i, (topic, payload)) in got.iter().enumerate() {
        assert!(
            payload.len() <= LIMIT,
            "message {i} is {} bytes",
            payload.len()
        );
        let ev = parse(payload);
        assert_valid(&schema, &ev);
        assert_eq!(topic, &expected_topic(&ev));
        let k = key(&ev);
        let found = want.by_ref().any(|w| {
            let same = key(w) == k;
            assert!(
                same || size(w) > LIMIT - 300,
                "a small event is missing before message {i}"
            );
            same
        });
        assert!(
            found,
            "message {i} is not in the reference (or out of order)"
        );
    }
    assert!(
        want.all(|w| size(w) > LIMIT - 300),
        "small events missing at the end"
    );
    // The connection was never torn down.
    assert_eq!(broker.metric("tapbus_output_up", &["output=\"mqtt\""]), 1.0);
    let log = broker.log_text();
    assert!(!log.contains("MQTT disconnected"), "{log}");
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
}

/// mqtts:// with the server verified against `tls_ca`.
#[test]
fn mqtts_with_tls_ca() {
    let pki = tempfile::tempdir().expect("tempdir");
    write_test_pki(pki.path());
    let (ca_pem, cert, key) = (
        pki.path().join("ca.pem"),
        pki.path().join("server.pem"),
        pki.path().join("server.key"),
    );
    let tls_port = free_port();
    let mq = Mosquitto::start_with(
        free_port(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_pem.display(),
            cert.display(),
            key.display()
        ),
    );
    wait_until("mosquitto TLS listener", Duration::from_secs(10), || {
        tapbus_testsupport::port_open(tls_port)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_mqtt(
        dir.path(),
        &sock,
        &format!(
            "url = \"mqtts://localhost:{tls_port}\"\ntls_ca = \"{}\"\n",
            ca_pem.display()
        ),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    assert_delivers(&broker, &mq, &sock, "dnsdist.fstrm", "mqttv311", 0);
}

/// mqtts:// refuses a server whose certificate another CA signed: the output never comes
/// up, the log says why, and nothing reaches the server.
#[test]
fn mqtts_refuses_a_server_of_another_ca() {
    let pki = tempfile::tempdir().expect("tempdir");
    write_test_pki(pki.path());
    let other = tempfile::tempdir().expect("tempdir");
    write_test_pki(other.path());
    let tls_port = free_port();
    let mq = Mosquitto::start_with(
        free_port(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            pki.path().join("ca.pem").display(),
            pki.path().join("server.pem").display(),
            pki.path().join("server.key").display()
        ),
    );
    wait_until("mosquitto TLS listener", Duration::from_secs(10), || {
        tapbus_testsupport::port_open(tls_port)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_mqtt(
        dir.path(),
        &sock,
        &format!(
            "url = \"mqtts://localhost:{tls_port}\"\ntls_ca = \"{}\"\n",
            other.path().join("ca.pem").display()
        ),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    let sub = MosquittoSub::start(&mq, 1, "mqttv311", 0, 5);
    replay(&capture("dnsdist.fstrm"), &sock);
    wait_until("the TLS failure logged", Duration::from_secs(15), || {
        broker.log_text().to_lowercase().contains("certificate")
    });
    assert_eq!(broker.metric("tapbus_output_up", &["output=\"mqtt\""]), 0.0);
    let got = sub.finish(Duration::from_secs(10));
    assert!(
        got.is_empty(),
        "events reached an unverified server: {got:?}"
    );
    assert!(
        !broker.log_text().contains("MQTT connected"),
        "{}",
        broker.log_text()
    );
}

/// The server goes away and comes back: the output logs the loss once, reports down, and
/// reconnects by itself; events flow again.
#[test]
fn reconnects_after_server_restart() {
    let port = free_port();
    let mq = Mosquitto::start_on(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let broker = Broker::start_unix(&sock, None, &mq.url());
    broker.wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    drop(mq);
    wait_until("output down", Duration::from_secs(10), || {
        broker.metric("tapbus_output_up", &["output=\"mqtt\""]) == 0.0
    });
    // Let a few reconnect attempts fail.
    std::thread::sleep(Duration::from_millis(800));
    let mq = Mosquitto::start_on(port);
    broker.wait_metric("tapbus_output_up", &["output=\"mqtt\""], 1.0);
    let name = "dnsdist.fstrm";
    let reference = reference_events(&capture(name));
    let sub = MosquittoSub::start(&mq, reference.len(), "mqttv311", 0, 15);
    replay(&capture(name), &sock);
    let got = sub.finish(Duration::from_secs(20));
    assert_same(name, &got, &reference);
    let log = broker.log_text();
    assert_eq!(log.matches("MQTT disconnected").count(), 1, "{log}");
    assert_eq!(log.matches("MQTT connected").count(), 2, "{log}");
}

fn write_config_mqtt(dir: &Path, sock: &Path, body: &str) -> PathBuf {
    write_broker_config(dir, sock, "mqtt", body)
}
