//! Publish: producer --JSON--> bus, with confirmations. One task per output drains that
//! output's bounded queue; every output confirms what it sent before counting it as
//! published, holds what is unconfirmed (bounded) and sends it again after a reconnect, so
//! `published + dropped == queued` for every output, through any outage (docs/broker.md, "Delivery
//! and accounting", says what confirms an event on each bus).
//!
//! * [`nats`]: core publish (marker windows) or JetStream (PubAcks, `Nats-Msg-Id`).
//! * [`mqtt`]: QoS 0 or 1, MQTT 3.1.1 or 5.
//! * [`redis`]: `PUBLISH`, `RPUSH` (list) or `XADD` (stream), pipelined.
//! * [`stdout`]: JSON lines.
//! * [`tcp_json`]: JSON lines over TCP (Logstash `tcp` input), written but unconfirmed.
//! * [`dnstap_file`]: the original dnstap frames into Frame Streams capture files (rotated).
//! * [`dnstap_relay`]: the original dnstap frames to another dnstap receiver (bidirectional
//!   Frame Streams over TCP or a unix socket).

pub mod dnstap_file;
pub mod dnstap_relay;
pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod settle;
pub mod stdout;
pub mod tcp_json;

use std::sync::Arc;

use bytes::Bytes;
use tapbus_config::OutputKind;
use tapbus_proto::event::Summary;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::PublishMetrics;

/// One message to publish: the payload (shared between outputs) and the fields the
/// subject/topic template of each output is rendered from.
#[derive(Debug, Clone)]
pub struct Message {
    pub payload: Bytes,
    pub summary: Summary,
    /// The exact subject (NATS), topic (MQTT) or channel (Redis `publish`) to use instead
    /// of the output's template: consumers publishing records (`tapbus.reduced.client`,
    /// `tapbus/reduced/client`). Redis list and stream modes keep their key.
    pub subject: Option<Arc<str>>,
    /// JetStream `Nats-Msg-Id` instead of the per-process one: a record's deterministic id,
    /// so the stream drops a re-emission after a restart.
    pub id: Option<Arc<str>>,
    /// Told when the bus confirmed the message (or it was dropped): see [`settle`].
    pub settle: Option<settle::Ticket>,
    /// The original dnstap data frame payload, byte for byte (a reference-counted handle
    /// on the read buffer, never a copy), for the raw dnstap outputs ([`dnstap_file`],
    /// [`dnstap_relay`]). Set only when some output is raw ([`OutputKind::is_raw`]); the
    /// fan-out clears it for the others, so a JSON output never holds a frame.
    pub raw: Option<Bytes>,
}

impl Message {
    /// A broker event: subject from the output's template, no ticket.
    pub fn event(payload: Bytes, summary: Summary) -> Message {
        Message {
            payload,
            summary,
            subject: None,
            id: None,
            settle: None,
            raw: None,
        }
    }

    /// A consumer's message to an exact subject, with an optional de-duplication id and a
    /// ticket of a [`settle::Settlement`].
    pub fn record(
        subject: Arc<str>,
        payload: Bytes,
        id: Option<Arc<str>>,
        settle: Option<settle::Ticket>,
    ) -> Message {
        Message {
            payload,
            summary: Summary::default(),
            subject: Some(subject),
            id,
            settle,
            raw: None,
        }
    }
}

/// The receiving side of one output's queue.
pub type Queue = mpsc::Receiver<Message>;

/// Starts the publishing task for one output; it returns when the queue is closed and
/// everything in it was confirmed or counted as dropped.
pub fn spawn(name: String, kind: OutputKind, rx: Queue, metrics: PublishMetrics) -> JoinHandle<()> {
    match kind {
        OutputKind::Nats(n) => tokio::spawn(nats::run(name, n, rx, metrics)),
        OutputKind::Mqtt(m) => tokio::spawn(mqtt::run(name, m, rx, metrics)),
        OutputKind::Redis(r) => tokio::spawn(redis::run(name, r, rx, metrics)),
        OutputKind::Stdout => tokio::spawn(stdout::run(rx, metrics)),
        OutputKind::TcpJson { addr, backoff } => {
            tokio::spawn(tcp_json::run(name, addr, backoff, rx, metrics))
        }
        OutputKind::DnstapFile(f) => dnstap_file::spawn(name, f, rx, metrics),
        OutputKind::DnstapRelay(r) => tokio::spawn(dnstap_relay::run(name, r, rx, metrics)),
    }
}
