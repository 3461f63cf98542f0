//! The processes of the metrics path for the integration tests of this crate (it.rs,
//! dashboards.rs): the binaries, tapbus-mimir and tapbus-aggregate started against a
//! NATS server, and a capture replayed through a broker into JetStream.

#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tapbus_testsupport::proc::Proc;
use tapbus_testsupport::servers::{Nats, Prometheus};
use tapbus_testsupport::{free_port, http_get, wait_until};

pub fn mimir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapbus-mimir"))
}

/// Another binary of the workspace (built when missing).
pub fn bin(package: &str) -> PathBuf {
    tapbus_testsupport::sibling_bin(&mimir_bin(), package, package)
}

/// tapbus-mimir from `tapbus.metrics.>` into `prom`, once its input is connected; returns
/// it and its metrics port.
pub fn start_mimir(nats: &Nats, prom: &Prometheus) -> (Proc, u16) {
    start_mimir_to(nats, &prom.write_url())
}

/// tapbus-mimir from `tapbus.metrics.>` writing to `url`, once its input is connected;
/// returns it and its metrics port.
pub fn start_mimir_to(nats: &Nats, url: &str) -> (Proc, u16) {
    let port = free_port();
    (start_mimir_listening(nats, url, port), port)
}

/// [`start_mimir_to`] with its `/metrics` on `port` (a scrape target, known before
/// Prometheus starts).
pub fn start_mimir_listening(nats: &Nats, url: &str, port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new(mimir_bin())
            .args([
                "--input",
                &format!("{}/tapbus.metrics.>", nats.url()),
                "--url",
                url,
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until("mimir subscribed", Duration::from_secs(20), || {
        http_get(&format!("127.0.0.1:{port}"), "/health").is_some()
    });
    p
}

/// tapbus-aggregate from `input` publishing batches every second to `nats`.
pub fn start_aggregate(nats: &Nats, input: &str, instance: &str, env: &[(&str, &str)]) -> Proc {
    start_aggregate_listening(nats, input, instance, env, "")
}

/// [`start_aggregate`] with its `/metrics` on `metrics_listen` (`""`: none).
pub fn start_aggregate_listening(
    nats: &Nats,
    input: &str,
    instance: &str,
    env: &[(&str, &str)],
    metrics_listen: &str,
) -> Proc {
    let mut cmd = Command::new(bin("tapbus-aggregate"));
    cmd.args([
        "--input",
        input,
        "--output",
        nats.url(),
        "--metrics-listen",
        metrics_listen,
        "--instance",
        instance,
    ])
    .env("TAPBUS_AGGREGATE__INTERVAL", "1s")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(&mut cmd)
}

/// The capture replayed by a broker (file input) into JetStream on `nats_url` (the
/// broker makes the stream `DNSTAP`).
pub fn replay(nats_url: &str, capture: &str) {
    tapbus_testsupport::jetstream::replay_capture(&bin("tapbus-broker"), nats_url, capture);
}

/// The JetStream pull-consumer URL of the stream `DNSTAP` on `nats` for `durable`.
pub fn durable_input(nats: &Nats, durable: &str) -> String {
    tapbus_testsupport::jetstream::dnstap_durable(nats.url(), durable)
}
