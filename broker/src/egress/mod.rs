//! Egress: events leave the broker. One task per output drains that output's queue.
//!
//! Each output module exposes `run(queue, ...)`, which returns when the queue is closed and
//! everything in it has been handed to the bus (or counted as dropped).

pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod stdout;

use tapbus_config::{OutputKind, OutputSpec};
use tokio::task::JoinHandle;

use crate::fanout::EventRx;
use crate::metrics::OutputMetrics;

/// Starts the egress task for one output.
pub fn spawn(spec: OutputSpec, rx: EventRx, metrics: OutputMetrics) -> JoinHandle<()> {
    match spec.kind {
        OutputKind::Nats(n) => tokio::spawn(nats::run(spec.name, n, rx, metrics)),
        OutputKind::Mqtt(m) => tokio::spawn(mqtt::run(spec.name, m, rx, metrics)),
        OutputKind::Redis(r) => tokio::spawn(redis::run(spec.name, r, rx, metrics)),
        OutputKind::Stdout => tokio::spawn(stdout::run(rx, metrics)),
    }
}
