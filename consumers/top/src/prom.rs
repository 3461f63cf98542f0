//! The broker's health, on the side arrow broker /metrics --HTTP--> tapbus-top: the
//! Prometheus text of `tapbus-broker`'s `/metrics` (parsed with the `prometheus-parse`
//! crate) read into the numbers the broker view shows, per input and per output.
//!
//! Pure code: text in, [`BrokerHealth`] out. Metrics it does not know are ignored, so a
//! newer broker (or another exporter) never breaks it; bounded: at most [`MAX_ROWS`] inputs
//! and outputs are kept (the rest are counted in `overflow`).

use std::collections::BTreeMap;

/// Inputs or outputs kept; more are counted in [`BrokerHealth::overflow`].
pub const MAX_ROWS: usize = 64;

/// One dnstap input of the broker (label `input`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputHealth {
    /// `tapbus_connections_total`.
    pub connections: f64,
    /// `tapbus_connections_active`.
    pub active: f64,
    /// `tapbus_connections_refused_total`.
    pub refused: f64,
    /// `tapbus_frames_total{kind="data"}` and `{kind="oversize"}`.
    pub frames: f64,
    pub oversize: f64,
    /// `tapbus_events_total`.
    pub events: f64,
    /// `tapbus_malformed_total`, every reason together.
    pub malformed: f64,
    /// `tapbus_dns_malformed_total`.
    pub dns_malformed: f64,
}

/// One output of the broker (label `output`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputHealth {
    /// `tapbus_output_up` (1 connected).
    pub up: Option<f64>,
    /// `tapbus_published_total`.
    pub published: f64,
    /// `tapbus_dropped_total` by `reason`.
    pub dropped: BTreeMap<String, f64>,
    /// `tapbus_queue_depth` and `tapbus_queue_capacity`.
    pub queue_depth: f64,
    pub queue_capacity: f64,
    /// `tapbus_inflight`.
    pub inflight: f64,
    /// `tapbus_resent_total`.
    pub resent: f64,
    /// `tapbus_filtered_total`.
    pub filtered: f64,
}

impl OutputHealth {
    /// Every drop, whatever the reason.
    pub fn dropped_total(&self) -> f64 {
        self.dropped.values().sum()
    }
}

/// What one scrape of the broker said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerHealth {
    pub inputs: BTreeMap<String, InputHealth>,
    pub outputs: BTreeMap<String, OutputHealth>,
    /// Samples of tapbus metrics that named an input or output beyond [`MAX_ROWS`].
    pub overflow: u64,
}

impl BrokerHealth {
    /// Reads the Prometheus text exposition (0.0.4 or OpenMetrics). Never fails: what it
    /// cannot read is skipped.
    pub fn parse(text: &str) -> BrokerHealth {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = match prometheus_parse::Scrape::parse(lines) {
            Ok(s) => s,
            Err(_) => return BrokerHealth::default(),
        };
        let mut h = BrokerHealth::default();
        for s in scrape.samples {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            let v = if v.is_finite() { v } else { 0.0 };
            let name = s.metric.as_str();
            if let Some(input) = s.labels.get("input") {
                let Some(i) = row(&mut h.inputs, input, &mut h.overflow) else {
                    continue;
                };
                match name {
                    "tapbus_connections_total" => i.connections += v,
                    "tapbus_connections_active" => i.active += v,
                    "tapbus_connections_refused_total" => i.refused += v,
                    "tapbus_frames_total" => match s.labels.get("kind") {
                        Some("data") => i.frames += v,
                        Some("oversize") => i.oversize += v,
                        _ => {}
                    },
                    "tapbus_events_total" => i.events += v,
                    "tapbus_malformed_total" => i.malformed += v,
                    "tapbus_dns_malformed_total" => i.dns_malformed += v,
                    _ => {}
                }
            } else if let Some(output) = s.labels.get("output") {
                let Some(o) = row(&mut h.outputs, output, &mut h.overflow) else {
                    continue;
                };
                match name {
                    "tapbus_output_up" => o.up = Some(v),
                    "tapbus_published_total" => o.published += v,
                    "tapbus_dropped_total" => {
                        let reason = s.labels.get("reason").unwrap_or("unknown");
                        if o.dropped.len() < MAX_ROWS || o.dropped.contains_key(reason) {
                            *o.dropped.entry(reason.to_string()).or_default() += v;
                        }
                    }
                    "tapbus_queue_depth" => o.queue_depth += v,
                    "tapbus_queue_capacity" => o.queue_capacity += v,
                    "tapbus_inflight" => o.inflight += v,
                    "tapbus_resent_total" => o.resent += v,
                    "tapbus_filtered_total" => o.filtered += v,
                    _ => {}
                }
            }
        }
        h
    }

    /// True when the text had no broker metric at all (wrong URL, another exporter).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.outputs.is_empty()
    }
}

fn row<'a, T: Default>(
    map: &'a mut BTreeMap<String, T>,
    key: &str,
    overflow: &mut u64,
) -> Option<&'a mut T> {
    if !map.contains_key(key) && map.len() >= MAX_ROWS {
        *overflow += 1;
        return None;
    }
    Some(map.entry(key.to_string()).or_default())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What `tapbus-broker` serves (prometheus-client's OpenMetrics text), trimmed.
    pub(crate) const BROKER_METRICS: &str = "\
# HELP tapbus_connections dnstap connections accepted (or dialled, or files opened).
# TYPE tapbus_connections counter
tapbus_connections_total{input=\"unix\"} 3
# HELP tapbus_connections_active dnstap connections open now.
# TYPE tapbus_connections_active gauge
tapbus_connections_active{input=\"unix\"} 2
# TYPE tapbus_frames counter
tapbus_frames_total{input=\"unix\",kind=\"data\"} 1500
tapbus_frames_total{input=\"unix\",kind=\"control\"} 6
tapbus_frames_total{input=\"unix\",kind=\"oversize\"} 1
# TYPE tapbus_events counter
tapbus_events_total{input=\"unix\"} 1499
# TYPE tapbus_malformed counter
tapbus_malformed_total{input=\"unix\",reason=\"not_dnstap\"} 1
tapbus_malformed_total{input=\"unix\",reason=\"protocol\"} 2
# TYPE tapbus_published counter
tapbus_published_total{output=\"nats\"} 1400
tapbus_published_total{output=\"stdout\"} 1499
# TYPE tapbus_dropped counter
tapbus_dropped_total{output=\"nats\",reason=\"queue_full\"} 90
tapbus_dropped_total{output=\"nats\",reason=\"shutdown\"} 9
# TYPE tapbus_queue_depth gauge
tapbus_queue_depth{output=\"nats\"} 12
# TYPE tapbus_queue_capacity gauge
tapbus_queue_capacity{output=\"nats\"} 16384
# TYPE tapbus_output_up gauge
tapbus_output_up{output=\"nats\"} 0
tapbus_output_up{output=\"stdout\"} 1
# TYPE tapbus_inflight gauge
tapbus_inflight{output=\"nats\"} 256
# EOF
";

    #[test]
    fn reads_the_broker_metrics() {
        let h = BrokerHealth::parse(BROKER_METRICS);
        let i = &h.inputs["unix"];
        assert_eq!(
            (
                i.connections,
                i.active,
                i.frames,
                i.oversize,
                i.events,
                i.malformed
            ),
            (3.0, 2.0, 1500.0, 1.0, 1499.0, 3.0)
        );
        let n = &h.outputs["nats"];
        assert_eq!(n.up, Some(0.0));
        assert_eq!(n.published, 1400.0);
        assert_eq!(n.dropped["queue_full"], 90.0);
        assert_eq!(n.dropped_total(), 99.0);
        assert_eq!(
            (n.queue_depth, n.queue_capacity, n.inflight),
            (12.0, 16384.0, 256.0)
        );
        assert_eq!(h.outputs["stdout"].up, Some(1.0));
        assert_eq!(h.overflow, 0);
    }

    #[test]
    fn junk_is_empty_not_an_error() {
        for t in [
            "",
            "garbage {{{ 1",
            "<html>nope</html>",
            "x 1\ny{a=\"b\"} 2",
        ] {
            assert!(BrokerHealth::parse(t).is_empty(), "{t:?}");
        }
        let h = BrokerHealth::parse("tapbus_published_total{output=\"a\"} NaN\n");
        assert_eq!(h.outputs["a"].published, 0.0);
    }

    #[test]
    fn rows_are_bounded() {
        let text: String = (0..MAX_ROWS + 3)
            .map(|i| format!("tapbus_published_total{{output=\"o{i}\"}} 1\n"))
            .collect();
        let h = BrokerHealth::parse(&text);
        assert_eq!(h.outputs.len(), MAX_ROWS);
        assert_eq!(h.overflow, 3);
    }
}
