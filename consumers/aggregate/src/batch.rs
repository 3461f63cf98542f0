//! The push arrow: aggregate --metrics--> `tapbus.metrics.<instance>` batches -->
//! tapbus-mimir --> remote write. One [`Batch`] is the whole state at one instant: every
//! counter, and every histogram bucket (cumulative, `le` label as in the text format,
//! `+Inf` last), `_sum` and `_count`, each as one [`Series`] with its full label set.
//!
//! All samples of a batch share `timestamp_ms`, fixed by the caller when the batch is
//! made (the core never reads the clock), and a batch has a deterministic
//! [`message_id`](Batch::message_id) (instance + seq). So a batch sent twice, after a
//! reconnect or a redelivery, carries the same samples at the same timestamp and the same
//! id: downstream de-duplicates it (JetStream by `Nats-Msg-Id`, remote write by
//! series + timestamp). Values are cumulative, so a lost batch loses resolution, not counts.
//!
//! Layout: `batch.schema.json` (JSON Schema draft 2020-12), [`SCHEMA`] here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::exposition::write_float;
use crate::metrics::{Aggregator, Kind, Le, Sink, Value};

/// `batch.schema.json`.
pub const SCHEMA: &str = include_str!("../batch.schema.json");

/// The bus subject of an instance's batches: `tapbus.metrics.<instance>`.
pub fn subject(instance: &str) -> String {
    format!("tapbus.metrics.{instance}")
}

/// One metric batch (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The aggregate instance (also the `instance` label of every series).
    pub instance: String,
    /// The caller's batch number, increasing per instance.
    pub seq: u64,
    /// The sample timestamp of every series, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Every sample.
    pub series: Vec<Series>,
}

/// One sample: metric name (with `_bucket` / `_sum` / `_count` for histograms), its labels
/// (including `instance`, and `le` for buckets) and its value (always finite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Batch {
    /// `tapbus-metrics:<instance>:<seq>`: the same for a re-sent batch, different for
    /// every other (the instance has no `:`).
    pub fn message_id(&self) -> String {
        message_id(&self.instance, self.seq)
    }

    /// The JSON form (what is published).
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and finite floats always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The message id of batch `seq` of `instance` (see [`Batch::message_id`]).
pub fn message_id(instance: &str, seq: u64) -> String {
    format!("tapbus-metrics:{instance}:{seq}")
}

impl Aggregator {
    /// The whole state as one batch with timestamp `now_ms` and number `seq`.
    pub fn batch(&self, now_ms: i64, seq: u64) -> Batch {
        let mut sink = Collect { series: Vec::new() };
        self.visit(&mut sink);
        Batch {
            instance: self.spec().instance.clone(),
            seq,
            timestamp_ms: now_ms,
            series: sink.series,
        }
    }
}

impl Aggregator {
    /// The JSON of [`Aggregator::batch`]`(now_ms, seq)` written straight into `out`
    /// (appended), without building the [`Batch`]: the same content (it reads back as an
    /// equal `Batch`) for a fraction of the cost with a large state. Labels are in
    /// exposition order and integer values have no fraction, so the bytes differ from
    /// [`Batch::to_json`]'s; two calls on the same state give the same bytes.
    pub fn write_batch_json(&self, now_ms: i64, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"instance\":");
        json_str(out, &self.spec().instance);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(b",\"timestamp_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(now_ms).as_bytes());
        out.extend_from_slice(b",\"series\":[");
        let mut sink = JsonSink {
            out: &mut *out,
            first: true,
        };
        self.visit(&mut sink);
        out.extend_from_slice(b"]}");
    }
}

/// A JSON string (serde_json's escaping; writing into a `Vec` cannot fail).
fn json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

struct JsonSink<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Sink for JsonSink<'_> {
    fn family(&mut self, _: &'static str, _: &'static str, _: Kind) {}

    fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], le: Le, value: Value) {
        let out = &mut *self.out;
        if !std::mem::take(&mut self.first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        json_str(out, name);
        out.extend_from_slice(b",\"labels\":{");
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, k);
            out.push(b':');
            json_str(out, v);
        }
        match le {
            Le::No => {}
            Le::Inf => out.extend_from_slice(b",\"le\":\"+Inf\""),
            Le::Bound(b) => {
                let mut s = String::new();
                write_float(&mut s, b);
                out.extend_from_slice(b",\"le\":");
                json_str(out, &s);
            }
        }
        out.extend_from_slice(b"},\"value\":");
        match value {
            Value::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            // Finite by construction (see `MAX_LATENCY`); a non-finite value would be
            // written as null by serde_json and refused by the schema.
            Value::Float(f) => {
                let _ = serde_json::to_writer(&mut *out, &f);
            }
        }
        out.push(b'}');
    }
}

struct Collect {
    series: Vec<Series>,
}

impl Sink for Collect {
    fn family(&mut self, _: &'static str, _: &'static str, _: Kind) {}

    fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], le: Le, value: Value) {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match le {
            Le::No => {}
            Le::Inf => {
                l.insert("le".into(), "+Inf".into());
            }
            Le::Bound(b) => {
                let mut s = String::new();
                write_float(&mut s, b);
                l.insert("le".into(), s);
            }
        }
        self.series.push(Series {
            name: name.to_owned(),
            labels: l,
            value: value.as_f64(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AggregateSpec;
    use crate::testutil::Ev;

    fn find<'a>(b: &'a Batch, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Series> {
        b.series
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    #[test]
    fn every_counter_bucket_sum_and_count() {
        let mut spec = AggregateSpec::with_instance("b-1");
        spec.coredns = true;
        let mut a = Aggregator::new(spec);
        Ev::default().push(&mut a, 2);
        Ev {
            op: "CLIENT_RESPONSE",
            latency: Some(0.001),
            size: Some(100),
            ..Default::default()
        }
        .push(&mut a, 1);
        let b = a.batch(1_700_000_000_123, 7);
        assert_eq!(
            (b.instance.as_str(), b.seq, b.timestamp_ms),
            ("b-1", 7, 1_700_000_000_123)
        );
        assert_eq!(b.message_id(), "tapbus-metrics:b-1:7");
        assert!(b.series.iter().all(|s| s.labels["instance"] == "b-1"));

        let q = find(
            &b,
            "dnstap_messages_total",
            &[("operation", "CLIENT_QUERY")],
        );
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].value, 2.0);
        assert_eq!(q[0].labels.len(), 7);
        assert_eq!(q[0].labels["qtype"], "A");

        let buckets = find(&b, "dnstap_latency_seconds_bucket", &[]);
        assert_eq!(buckets.len(), LATENCY_BUCKETS_N + 1);
        assert_eq!(buckets[1].labels["le"], "0.0005");
        assert_eq!(buckets[1].value, 0.0);
        assert_eq!(buckets[2].labels["le"], "0.001");
        assert_eq!(buckets[2].value, 1.0);
        assert_eq!(buckets[16].labels["le"], "+Inf");
        assert_eq!(find(&b, "dnstap_latency_seconds_sum", &[])[0].value, 0.001);
        assert_eq!(find(&b, "dnstap_latency_seconds_count", &[])[0].value, 1.0);
        // 2 size series (query, response), 15 buckets each.
        assert_eq!(find(&b, "dnstap_message_size_bytes_bucket", &[]).len(), 30);
        assert_eq!(find(&b, "coredns_dns_requests_total", &[])[0].value, 2.0);
        assert_eq!(find(&b, "coredns_dns_responses_total", &[])[0].value, 1.0);
        assert_eq!(find(&b, "tapbus_aggregate_events_total", &[])[0].value, 3.0);
        assert_eq!(
            find(&b, "tapbus_aggregate_series_dropped_total", &[]).len(),
            8
        );

        // Every sample of the text format is in the batch, with the same value.
        let text = a.exposition();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, b.series.len());
    }

    const LATENCY_BUCKETS_N: usize = crate::LATENCY_BUCKETS.len();

    #[test]
    fn json_round_trips_and_validates() {
        let mut a = Aggregator::new(AggregateSpec::with_instance("b1"));
        Ev {
            identity: Some("we\"ird\n"),
            latency: Some(0.25),
            op: "RESOLVER_RESPONSE",
            ..Default::default()
        }
        .push(&mut a, 3);
        let b = a.batch(42, 0);
        let json = b.to_json();
        let back: Batch = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(back, b);
        assert_eq!(
            a.batch(42, 0).to_json(),
            json,
            "the same batch twice is the same bytes"
        );
        let mut direct = Vec::new();
        a.write_batch_json(42, 0, &mut direct);
        let back: Batch = serde_json::from_slice(&direct).expect("direct JSON reads back");
        assert_eq!(back, b, "write_batch_json has the same content");

        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
        let v = jsonschema::draft202012::new(&schema).expect("schema compiles");
        let doc: serde_json::Value = serde_json::from_slice(&json).expect("json");
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        // And the schema does reject things.
        let mut bad = doc.clone();
        bad["series"][0]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("instance");
        assert!(!v.is_valid(&bad));
        assert_eq!(subject("b1"), "tapbus.metrics.b1");
    }
}
