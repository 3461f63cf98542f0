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
use tapbus_bus::metrics::PublishFamilies;
pub use tapbus_bus::metrics::PublishMetrics;

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

/// Every `reason` of `tapbus_malformed_total`: each input exports all of them from its
/// start (at 0), so a query or alert on one reason has a series before the first error.
/// Frame Streams errors that close the connection (`session::SessionError::reason`), data
/// frames that are not dnstap (`tapbus_proto::event::EventError::reason`), an unknown
/// control frame, and a failed TLS handshake.
pub const MALFORMED_REASONS: &[&str] = &[
    // Connection closed: Frame Streams framing.
    "truncated",
    "control_too_long",
    "control_too_short",
    "control_field_overrun",
    "control_field_too_long",
    "frame_error",
    // Connection closed: handshake.
    "content_type_mismatch",
    "data_before_start",
    "unexpected_control",
    "handshake_timeout",
    "read_error",
    "write_error",
    "tls_handshake",
    // Frame skipped, connection kept.
    "bad_protobuf",
    "missing_type",
    "unsupported_type",
    "missing_message",
    "missing_message_type",
    "unknown_control",
];

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
    outputs: PublishFamilies,
    geoip_lookups: Family<ResultL, Counter>,
    geoip_reloads: Family<ResultL, Counter>,
    /// The GeoIP databases whose counters the two families above show (read at scrape).
    geoip: std::sync::Mutex<Option<tapbus_enrich::GeoIp>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultL {
    result: &'static str,
}

/// `tapbus_geoip_lookups_total{result}`.
const GEOIP_LOOKUPS: [&str; 4] = ["looked_up", "cache_hit", "not_global", "error"];
/// `tapbus_geoip_reloads_total{result}`.
const GEOIP_RELOADS: [&str; 2] = ["ok", "failed"];

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
            outputs: PublishFamilies::default(),
            geoip_lookups: Family::default(),
            geoip_reloads: Family::default(),
            geoip: std::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        for result in GEOIP_LOOKUPS {
            let _ = get(&m.geoip_lookups, &ResultL { result });
        }
        for result in GEOIP_RELOADS {
            let _ = get(&m.geoip_reloads, &ResultL { result });
        }
        registry.register(
            "geoip_lookups",
            "GeoIP/ASN lookups ([enrich.geoip]) by result: looked_up in the databases, cache_hit, not_global (private, loopback... not looked up), error (a record that did not decode)",
            m.geoip_lookups.clone(),
        );
        registry.register(
            "geoip_reloads",
            "GeoIP database files replaced on disk and reloaded (ok), or refused (failed: the previous one stays in use)",
            m.geoip_reloads.clone(),
        );
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
        m.outputs.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Shows the counters of these GeoIP databases.
    pub fn watch_geoip(&self, g: tapbus_enrich::GeoIp) {
        if let Ok(mut slot) = self.geoip.lock() {
            *slot = Some(g);
        }
    }

    fn sync_geoip(&self) {
        let Ok(slot) = self.geoip.lock() else {
            return;
        };
        let Some(g) = slot.as_ref() else {
            return;
        };
        let set = |f: &Family<ResultL, Counter>, result: &'static str, v: u64| {
            get(f, &ResultL { result })
                .inner()
                .store(v, std::sync::atomic::Ordering::Relaxed);
        };
        let hits = g.cache_hits();
        set(
            &self.geoip_lookups,
            "looked_up",
            g.lookups().saturating_sub(hits),
        );
        set(&self.geoip_lookups, "cache_hit", hits);
        set(&self.geoip_lookups, "not_global", g.lookups_skipped());
        set(&self.geoip_lookups, "error", g.lookup_errors());
        set(&self.geoip_reloads, "ok", g.reloads());
        set(&self.geoip_reloads, "failed", g.reload_failures());
    }

    /// Handles for one input (resolved when it starts and once per connection). Every
    /// series of the input, each reason of `tapbus_malformed_total` included, exists from
    /// the first call, at 0.
    pub fn input(&self, input: &str) -> InputMetrics {
        for reason in MALFORMED_REASONS {
            let _ = get(
                &self.malformed,
                &InputReasonL {
                    input: input.to_string(),
                    reason,
                },
            );
        }
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
    pub fn output(&self, output: &str) -> PublishMetrics {
        self.outputs.handles(output)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.sync_geoip();
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
        debug_assert!(
            MALFORMED_REASONS.contains(&reason),
            "malformed reason {reason:?} is missing from MALFORMED_REASONS"
        );
        self.malformed
            .get_or_create(&InputReasonL {
                input: self.name.clone(),
                reason,
            })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malformed_reason_is_exported_at_zero_from_the_start() {
        let m = Metrics::new();
        let _in = m.input("local");
        let text = m.encode();
        for reason in MALFORMED_REASONS {
            let line = format!("tapbus_malformed_total{{input=\"local\",reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        // The other labelled families of an input and an output have theirs too.
        let _out = m.output("bus");
        let text = m.encode();
        for kind in ["data", "control", "oversize"] {
            let line = format!("tapbus_frames_total{{input=\"local\",kind=\"{kind}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        for reason in ["queue_full", "publish_error", "too_large", "shutdown"] {
            let line = format!("tapbus_dropped_total{{output=\"bus\",reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
