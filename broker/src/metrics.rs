//! The broker's counters, exported as Prometheus text on `/metrics`.
//!
//! Label lookups happen once per connection or output: [`Metrics::input`] and
//! [`Metrics::output`] hand out handles whose counters are plain atomics, so the per-frame
//! hot path never takes a lock.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputL {
    input: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputKindL {
    input: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InputReasonL {
    input: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputL {
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputReasonL {
    output: String,
    reason: &'static str,
}

/// All metric families, registered once.
pub struct Metrics {
    registry: Registry,
    connections: Family<InputL, Counter>,
    active: Family<InputL, Gauge>,
    refused: Family<InputL, Counter>,
    frames: Family<InputKindL, Counter>,
    bytes: Family<InputL, Counter>,
    events: Family<InputL, Counter>,
    dns_malformed: Family<InputL, Counter>,
    malformed: Family<InputReasonL, Counter>,
    published: Family<OutputL, Counter>,
    resent: Family<OutputL, Counter>,
    inflight: Family<OutputL, Gauge>,
    dropped: Family<OutputReasonL, Counter>,
    queue_depth: Family<OutputL, Gauge>,
    queue_capacity: Family<OutputL, Gauge>,
    up: Family<OutputL, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tapbus");
        let m = Metrics {
            connections: Family::default(),
            active: Family::default(),
            refused: Family::default(),
            frames: Family::default(),
            bytes: Family::default(),
            events: Family::default(),
            dns_malformed: Family::default(),
            malformed: Family::default(),
            published: Family::default(),
            resent: Family::default(),
            inflight: Family::default(),
            dropped: Family::default(),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            up: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "dnstap connections accepted (or dialled, or files opened)",
            m.connections.clone(),
        );
        registry.register(
            "connections_active",
            "dnstap connections open now",
            m.active.clone(),
        );
        registry.register(
            "connections_refused",
            "connections closed at once because max_connections was reached",
            m.refused.clone(),
        );
        registry.register(
            "frames",
            "Frame Streams frames read, by kind (data, control, oversize)",
            m.frames.clone(),
        );
        registry.register(
            "bytes",
            "bytes read from dnstap connections",
            m.bytes.clone(),
        );
        registry.register(
            "events",
            "dnstap messages decoded into events and handed to the outputs",
            m.events.clone(),
        );
        registry.register(
            "dns_malformed",
            "events whose DNS wire message did not fully parse (still published)",
            m.dns_malformed.clone(),
        );
        registry.register(
            "malformed",
            "bad input by reason: frames that are not dnstap (skipped) and connections closed for a protocol error",
            m.malformed.clone(),
        );
        registry.register(
            "published",
            "events each output's bus has confirmed (NATS: marker echoed or JetStream ack; MQTT: written at QoS 0, PUBACK at QoS 1; Redis: pipeline reply)",
            m.published.clone(),
        );
        registry.register(
            "resent",
            "events sent again because the connection broke before the bus confirmed them (subscribers may see these twice)",
            m.resent.clone(),
        );
        registry.register(
            "inflight",
            "events sent to the bus and held until it confirms them",
            m.inflight.clone(),
        );
        registry.register(
            "dropped",
            "events dropped by each output, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "queue_depth",
            "events waiting in each output's queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_capacity",
            "size of each output's queue",
            m.queue_capacity.clone(),
        );
        registry.register(
            "output_up",
            "1 when the output is connected to its bus, else 0",
            m.up.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Handles for one input (resolved once per connection).
    pub fn input(&self, input: &str) -> InputMetrics {
        let l = InputL {
            input: input.to_string(),
        };
        let k = |kind| InputKindL {
            input: input.to_string(),
            kind,
        };
        InputMetrics {
            name: input.to_string(),
            connections: get(&self.connections, &l),
            active: get(&self.active, &l),
            refused: get(&self.refused, &l),
            data: get(&self.frames, &k("data")),
            control: get(&self.frames, &k("control")),
            oversize: get(&self.frames, &k("oversize")),
            bytes: get(&self.bytes, &l),
            events: get(&self.events, &l),
            dns_malformed: get(&self.dns_malformed, &l),
            malformed: self.malformed.clone(),
        }
    }

    /// Handles for one output.
    pub fn output(&self, output: &str) -> OutputMetrics {
        let l = OutputL {
            output: output.to_string(),
        };
        let r = |reason| OutputReasonL {
            output: output.to_string(),
            reason,
        };
        OutputMetrics {
            published: get(&self.published, &l),
            resent: get(&self.resent, &l),
            inflight: get(&self.inflight, &l),
            dropped_full: get(&self.dropped, &r("queue_full")),
            dropped_error: get(&self.dropped, &r("publish_error")),
            dropped_too_large: get(&self.dropped, &r("too_large")),
            dropped_shutdown: get(&self.dropped, &r("shutdown")),
            depth: get(&self.queue_depth, &l),
            capacity: get(&self.queue_capacity, &l),
            up: get(&self.up, &l),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

/// Per-input counters.
#[derive(Clone, Debug)]
pub struct InputMetrics {
    pub name: String,
    pub connections: Counter,
    pub active: Gauge,
    pub refused: Counter,
    pub data: Counter,
    pub control: Counter,
    pub oversize: Counter,
    pub bytes: Counter,
    pub events: Counter,
    pub dns_malformed: Counter,
    malformed: Family<InputReasonL, Counter>,
}

impl InputMetrics {
    /// Counts one piece of bad input (rare: takes the family lock).
    pub fn malformed(&self, reason: &'static str) {
        self.malformed
            .get_or_create(&InputReasonL {
                input: self.name.clone(),
                reason,
            })
            .inc();
    }
}

/// Per-output counters.
#[derive(Clone, Debug)]
pub struct OutputMetrics {
    pub published: Counter,
    pub resent: Counter,
    pub inflight: Gauge,
    pub dropped_full: Counter,
    pub dropped_error: Counter,
    pub dropped_too_large: Counter,
    pub dropped_shutdown: Counter,
    pub depth: Gauge,
    pub capacity: Gauge,
    pub up: Gauge,
}

impl OutputMetrics {
    /// Events this output has settled: published or dropped for any reason.
    pub fn settled(&self) -> u64 {
        self.published.get()
            + self.dropped_full.get()
            + self.dropped_error.get()
            + self.dropped_too_large.get()
            + self.dropped_shutdown.get()
    }
}

/// One labelled metric handle. A function, so the family's read guard is released before
/// the next lookup (two guards alive in one expression deadlock on a new label set).
fn get<S, M>(family: &Family<S, M>, labels: &S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    family.get_or_create(labels).clone()
}

pub type SharedMetrics = Arc<Metrics>;
