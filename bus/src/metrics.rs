//! Counters of the publishing side, the same for every binary that publishes: the broker's
//! outputs and the consumers that publish back. The families are registered once in the
//! binary's registry ([`PublishFamilies::register`]); [`PublishFamilies::handles`] resolves
//! one output's label set once, so the per-event path only touches atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputL {
    output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputReasonL {
    output: String,
    reason: &'static str,
}

/// The metric families of every output (label `output`).
#[derive(Debug, Clone, Default)]
pub struct PublishFamilies {
    published: Family<OutputL, Counter>,
    resent: Family<OutputL, Counter>,
    inflight: Family<OutputL, Gauge>,
    dropped: Family<OutputReasonL, Counter>,
    filtered: Family<OutputL, Counter>,
    queue_depth: Family<OutputL, Gauge>,
    queue_capacity: Family<OutputL, Gauge>,
    up: Family<OutputL, Gauge>,
}

impl PublishFamilies {
    /// Registers the families (names without the registry's prefix, e.g. `published`
    /// becomes `tapbus_published_total` under the prefix `tapbus`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "published",
            "events each output's bus has confirmed (NATS: marker echoed or JetStream ack; MQTT: written at QoS 0, PUBACK at QoS 1; Redis: pipeline reply; dnstap file: written to the OS; dnstap relay: taken by the socket)",
            self.published.clone(),
        );
        registry.register(
            "resent",
            "events sent again because the connection broke before the bus confirmed them (subscribers may see these twice)",
            self.resent.clone(),
        );
        registry.register(
            "inflight",
            "events sent to the bus and held until it confirms them",
            self.inflight.clone(),
        );
        registry.register(
            "dropped",
            "events dropped by each output, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "filtered",
            "events not sent to an output because they did not match its filter",
            self.filtered.clone(),
        );
        registry.register(
            "queue_depth",
            "events waiting in each output's queue",
            self.queue_depth.clone(),
        );
        registry.register(
            "queue_capacity",
            "size of each output's queue",
            self.queue_capacity.clone(),
        );
        registry.register(
            "output_up",
            "1 when the output is connected to its bus, else 0",
            self.up.clone(),
        );
    }

    /// Handles for one output.
    pub fn handles(&self, output: &str) -> PublishMetrics {
        let l = OutputL {
            output: output.to_string(),
        };
        let r = |reason| OutputReasonL {
            output: output.to_string(),
            reason,
        };
        PublishMetrics {
            published: get(&self.published, &l),
            resent: get(&self.resent, &l),
            inflight: get(&self.inflight, &l),
            dropped_full: get(&self.dropped, &r("queue_full")),
            dropped_error: get(&self.dropped, &r("publish_error")),
            dropped_too_large: get(&self.dropped, &r("too_large")),
            dropped_shutdown: get(&self.dropped, &r("shutdown")),
            filtered: get(&self.filtered, &l),
            depth: get(&self.queue_depth, &l),
            capacity: get(&self.queue_capacity, &l),
            up: get(&self.up, &l),
        }
    }
}

/// Per-output counters.
#[derive(Clone, Debug)]
pub struct PublishMetrics {
    pub published: Counter,
    pub resent: Counter,
    pub inflight: Gauge,
    pub dropped_full: Counter,
    pub dropped_error: Counter,
    pub dropped_too_large: Counter,
    pub dropped_shutdown: Counter,
    /// Events the output's filter kept out (never queued).
    pub filtered: Counter,
    pub depth: Gauge,
    pub capacity: Gauge,
    pub up: Gauge,
}

impl PublishMetrics {
    /// Handles not registered anywhere (tests, tools).
    pub fn unregistered() -> PublishMetrics {
        PublishFamilies::default().handles("unregistered")
    }

    /// Events this output has settled: published, dropped for any reason, or filtered.
    pub fn settled(&self) -> u64 {
        self.published.get()
            + self.dropped_full.get()
            + self.dropped_error.get()
            + self.dropped_too_large.get()
            + self.dropped_shutdown.get()
            + self.filtered.get()
    }

    /// Events dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_full.get()
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
