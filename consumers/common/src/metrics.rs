//! A consumer's own metrics (`tapbus_consumer_*{consumer="NAME"}`) in prometheus-client,
//! every series registered, at 0, from the start; and the `/metrics` + `/health` endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The runtime's counters and gauges for one consumer.
#[derive(Debug, Default, Clone)]
pub struct Own {
    pub received: Counter,
    pub bad: Counter,
    pub acked: Counter,
    pub ack_errors: Counter,
    pub redelivered: Counter,
    pub duplicates: Counter,
    pub dedupe_evicted: Counter,
    pub batches: Counter,
    pub batches_failed: Counter,
    pub batches_dropped: Counter,
    pub renewals: Counter,
    pub unsettled: Counter,
    pub pending: Gauge,
    pub dedupe_ranges: Gauge,
    pub up: Gauge,
    pub ready: Gauge,
    /// Messages the inputs' bus clients dropped (slow consumer), summed at scrape time.
    pub(crate) input_dropped: Arc<std::sync::Mutex<Vec<Arc<AtomicU64>>>>,
    /// The bus's backlog for this consumer (`u64::MAX`: unknown, left out).
    pub(crate) lag: Arc<AtomicU64>,
    pub(crate) bus_unacked: Arc<AtomicU64>,
}

pub(crate) const UNKNOWN: u64 = u64::MAX;

impl Own {
    pub fn new() -> Self {
        Own {
            lag: Arc::new(AtomicU64::new(UNKNOWN)),
            bus_unacked: Arc::new(AtomicU64::new(UNKNOWN)),
            ..Own::default()
        }
    }

    /// Registers every series under `tapbus_consumer_*` with `consumer="{name}"`.
    pub fn register(&self, name: &str, registry: &mut Registry) {
        let r = registry.sub_registry_with_label(("consumer".into(), name.to_string().into()));
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "tapbus_consumer_messages",
                "messages received from the bus",
                &self.received,
            ),
            (
                "tapbus_consumer_bad",
                "messages that are not what this consumer reads (counted, acked, skipped)",
                &self.bad,
            ),
            (
                "tapbus_consumer_acked",
                "messages acknowledged",
                &self.acked,
            ),
            (
                "tapbus_consumer_ack_errors",
                "acks the bus did not take (the message comes again)",
                &self.ack_errors,
            ),
            (
                "tapbus_consumer_redelivered",
                "messages the bus delivered more than once",
                &self.redelivered,
            ),
            (
                "tapbus_consumer_duplicates",
                "redeliveries of messages this process had already handled: acked without their effect",
                &self.duplicates,
            ),
            (
                "tapbus_consumer_dedupe_evicted",
                "ranges of handled stream sequences forgotten to stay within dedupe_ranges (a redelivery of one would be applied again)",
                &self.dedupe_evicted,
            ),
            (
                "tapbus_consumer_batches",
                "batches of output written (bus confirmation or HTTP answer)",
                &self.batches,
            ),
            (
                "tapbus_consumer_batches_failed",
                "write attempts that failed and were tried again",
                &self.batches_failed,
            ),
            (
                "tapbus_consumer_batches_dropped",
                "batches refused for good by the downstream (counted by reason in the consumer's own metrics)",
                &self.batches_dropped,
            ),
            (
                "tapbus_consumer_in_progress",
                "in-progress acks sent for held messages (JetStream +WPI)",
                &self.renewals,
            ),
            (
                "tapbus_consumer_unsettled",
                "messages held at exit whose output was not confirmed by the drain deadline (not acked: the bus delivers them again)",
                &self.unsettled,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register(
            "tapbus_consumer_input_dropped",
            "messages the bus client dropped before this consumer read them (NATS slow consumer: lost on NATS core, delivered again on JetStream; a lower bound)",
            SumCounter(self.input_dropped.clone()),
        );
        let gauges: [(&str, &str, &Gauge); 4] = [
            (
                "tapbus_consumer_pending",
                "messages taken and not yet acknowledged",
                &self.pending,
            ),
            (
                "tapbus_consumer_dedupe_ranges",
                "ranges of handled stream sequences kept to recognise redeliveries",
                &self.dedupe_ranges,
            ),
            (
                "tapbus_consumer_input_up",
                "1 while every input is connected",
                &self.up,
            ),
            (
                "tapbus_consumer_ready",
                "1 once every input is subscribed (its bus, stream and durable exist)",
                &self.ready,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register_collector(Box::new(Backlog {
            lag: self.lag.clone(),
            unacked: self.bus_unacked.clone(),
        }));
    }

    /// Messages the inputs' bus clients dropped, summed.
    pub fn input_dropped(&self) -> u64 {
        self.input_dropped
            .lock()
            .map(|v| v.iter().map(|c| c.load(Ordering::Relaxed)).sum())
            .unwrap_or(0)
    }
}

/// A counter read from the inputs' own atomics at scrape time.
#[derive(Debug, Clone)]
struct SumCounter(Arc<std::sync::Mutex<Vec<Arc<AtomicU64>>>>);

impl EncodeMetric for SumCounter {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let v: u64 = self
            .0
            .lock()
            .map(|v| v.iter().map(|c| c.load(Ordering::Relaxed)).sum())
            .unwrap_or(0);
        encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

/// The bus's backlog gauges, left out while the bus has not told them.
#[derive(Debug)]
struct Backlog {
    lag: Arc<AtomicU64>,
    unacked: Arc<AtomicU64>,
}

impl Collector for Backlog {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = [
            (
                "tapbus_consumer_lag_messages",
                "messages the bus stores for this consumer's durable or group and has not delivered yet (JetStream num_pending, Redis stream lag)",
                &self.lag,
            ),
            (
                "tapbus_consumer_bus_unacked_messages",
                "messages the bus delivered to this consumer's durable or group, not yet acknowledged by any of its processes",
                &self.unacked,
            ),
        ];
        for (name, help, v) in rows {
            let v = v.load(Ordering::Relaxed);
            if v == UNKNOWN {
                continue;
            }
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// A counter by `reason`, bounded: the known reasons are exported at 0 from the start;
/// past 64 other distinct reasons, new ones count as `other`. What a consumer drops, by
/// why (tapbus-loki's lines, tapbus-mimir's batches).
#[derive(Debug, Clone)]
pub struct ByReason {
    family: prometheus_client::metrics::family::Family<Reason, Counter>,
    known: &'static [&'static str],
    others: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl ByReason {
    pub const MAX_OTHERS: usize = 64;

    pub fn new(known: &'static [&'static str]) -> Self {
        let b = ByReason {
            family: Default::default(),
            known,
            others: Arc::default(),
        };
        for k in known {
            let _ = b.family.get_or_create(&Reason {
                reason: (*k).into(),
            });
        }
        b
    }

    /// Registers the family as `name` (`_total` is added).
    pub fn register(&self, r: &mut Registry, name: &str, help: &str) {
        r.register(name, help, self.family.clone());
    }

    pub fn inc_by(&self, reason: &str, n: u64) {
        let reason = if self.known.contains(&reason) {
            reason
        } else {
            let mut o = self
                .others
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if o.contains(reason) {
                reason
            } else if o.len() < Self::MAX_OTHERS {
                o.insert(reason.to_string());
                reason
            } else {
                "other"
            }
        };
        self.family
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc_by(n);
    }
}

/// Renders a registry as Prometheus text, after `extra` (a consumer's own exposition,
/// such as aggregate's DNS metrics). Served as `text/plain; version=0.0.4`.
pub fn render(registry: &Registry, extra: &str) -> String {
    let mut out = String::with_capacity(extra.len() + 4096);
    out.push_str(extra);
    if prometheus_client::encoding::text::encode_registry(&mut out, registry).is_err() {
        tracing::error!("cannot encode the metrics");
    }
    out
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` (`render()`) and `GET /health` (200 once every input is
/// subscribed and connected, else 503 with what is missing) on `addr`, in a task of its
/// own.
pub async fn serve<F>(addr: std::net::SocketAddr, render: F, own: Own) -> anyhow::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let metrics = move || {
        let render = render.clone();
        async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], render()) }
    };
    let health = move || {
        let own = own.clone();
        async move {
            if own.ready.get() != 1 {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for the input (bus, stream or durable)\n",
                )
            } else if own.up.get() != 1 {
                (StatusCode::SERVICE_UNAVAILABLE, "input not connected\n")
            } else {
                (StatusCode::OK, "ok\n")
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /health");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_reason_starts_known_reasons_at_zero_and_bounds_the_others() {
        let b = ByReason::new(&["http_400"]);
        let mut reg = Registry::default();
        b.register(&mut reg, "x_dropped", "dropped");
        assert!(render(&reg, "").contains("x_dropped_total{reason=\"http_400\"} 0"));
        for i in 0..100 {
            b.inc_by(&format!("r{i}"), 1);
        }
        // A reason seen before the bound keeps its own series.
        b.inc_by("r0", 1);
        let text = render(&reg, "");
        assert!(
            text.contains("x_dropped_total{reason=\"other\"} 36"),
            "{text}"
        );
        assert!(text.contains("x_dropped_total{reason=\"r0\"} 2"), "{text}");
    }

    #[test]
    fn every_series_is_there_at_zero_and_backlog_only_once_known() {
        let own = Own::new();
        let mut reg = Registry::default();
        own.register("x", &mut reg);
        let text = render(&reg, "");
        for name in [
            "tapbus_consumer_messages_total",
            "tapbus_consumer_bad_total",
            "tapbus_consumer_duplicates_total",
            "tapbus_consumer_unsettled_total",
            "tapbus_consumer_input_dropped_total",
            "tapbus_consumer_pending",
            "tapbus_consumer_input_up",
        ] {
            assert!(
                text.contains(&format!("{name}{{consumer=\"x\"}} 0")),
                "{name} missing in\n{text}"
            );
        }
        assert!(!text.contains("tapbus_consumer_lag_messages"));
        own.lag.store(7, Ordering::Relaxed);
        own.received.inc();
        let text = render(&reg, "");
        assert!(
            text.contains("tapbus_consumer_lag_messages{consumer=\"x\"} 7"),
            "{text}"
        );
        assert!(text.contains("tapbus_consumer_messages_total{consumer=\"x\"} 1"));
        assert!(!text.contains("# EOF"));
    }
}
